"""Learner → sampler weights as ONE flat buffer: one object-store put and one call per sync.

Per-parameter RPCs are the top complaint about weight sync in RLHF frameworks; a packet is a single
contiguous tensor plus names and shapes, which Ray moves as one zero-copy numpy buffer on a node.
The transports at the end of this module (collective broadcast, CUDA IPC) move the same flat buffer.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from skill1.types import WeightsPacket

_VIEW_AS = {torch.bfloat16: torch.int16, torch.float16: torch.int16}  # numpy has no bfloat16


def _named_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    # named_parameters() lists a tied weight once (embed_tokens / lm_head share one tensor)
    return [(n, p.detach()) for n, p in model.named_parameters()]


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    # ZeRO-3 partitions a parameter: outside a gather its `.data` is an empty placeholder and `ds_shape` is the
    # whole parameter's shape
    return tuple(getattr(p, "ds_shape", p.shape))


def pack_state(model: torch.nn.Module, version: int) -> WeightsPacket:
    named = _named_tensors(model)
    dtype = named[0][1].dtype
    flat = torch.cat([t.reshape(-1).to("cpu", dtype) for _, t in named])
    return host_packet(version, layout_of(model), flat)


def host_array(flat: torch.Tensor) -> np.ndarray:
    """A flat weights buffer as a host numpy array, 16-bit floats viewed as int16 (numpy has no bfloat16)."""
    return flat.detach().cpu().view(_VIEW_AS.get(flat.dtype, flat.dtype)).numpy()


def host_packet(version: int, layout: "WeightsLayout", flat: torch.Tensor) -> WeightsPacket:
    """A packet for the object store: the flat buffer as a host array (`host_array`)."""
    return WeightsPacket(version=version, names=layout.names, shapes=layout.shapes, dtype=layout.dtype,
                         flat=host_array(flat))


def unpack(packet: WeightsPacket) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, packet.dtype)
    if isinstance(packet.flat, torch.Tensor):  # arrived by a collective or CUDA IPC
        flat = packet.flat
    else:
        with warnings.catch_warnings():  # the object store hands out read-only arrays; we only read them
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(np.asarray(packet.flat))
    if dtype in _VIEW_AS and flat.dtype != dtype:
        flat = flat.view(dtype)
    out, offset = {}, 0
    for name, shape in zip(packet.names, packet.shapes):
        n = int(np.prod(shape)) if shape else 1
        out[name] = flat[offset:offset + n].view(shape)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"weights packet v{packet.version}: {flat.numel()} values for {offset} expected")
    return out


@torch.no_grad()
def load_packet(model: torch.nn.Module, packet: WeightsPacket) -> None:
    tensors = unpack(packet)
    params = dict(model.named_parameters())
    missing = set(params) - set(tensors)
    if missing:
        raise KeyError(f"weights packet v{packet.version} lacks {sorted(missing)[:5]}")
    for name, value in tensors.items():
        params[name].copy_(value)


# ---------------------------------------------------------------------------------------------------------
# Rendezvous sockets (learner ranks, collective weight sync). torch's TCPStore server listens on every
# interface ("*:port") whatever host it is given, and has no authentication; gloo (and NCCL's bootstrap) listen
# on the address the hostname resolves to, a LAN address on most machines. So on one machine everything meets
# on loopback, and on a cluster a store listens on the node's own address only (cluster/README.md: ports).

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_store(host: str, port: int = 0, world: int | None = None, timeout_s: float = 900,
                wait_for_workers: bool = False):
    """A TCPStore server on `host` alone: we bind the socket and hand torch its descriptor (`master_listen_fd`),
    since torch's own bind ignores the host. Port 0 picks a free port (read `.port`) with no pick-then-bind race."""
    import datetime

    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound, fd = sock.getsockname()[1], sock.detach()  # the store owns the descriptor from here on
    try:
        return dist.TCPStore(host, bound, world, True, datetime.timedelta(seconds=timeout_s),
                             wait_for_workers=wait_for_workers, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def loopback_interface() -> str:
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addrs):
            return name
    return "lo"


def keep_collectives_on_loopback() -> None:
    """Single-machine run: gloo's and NCCL's sockets on loopback too, for every group this process forms from
    now on (torch reads these at each group's creation; NCCL picks its interface once per process). Overrides a
    value inherited from the environment."""
    iface = loopback_interface()
    os.environ["GLOO_SOCKET_IFNAME"] = iface
    os.environ["NCCL_SOCKET_IFNAME"] = iface


def gloo_on_loopback():
    """gloo groups formed from now on listen on loopback, until the returned function restores the previous
    setting. For a process that does not know yet whether it will later join peers on other machines."""
    before = os.environ.get("GLOO_SOCKET_IFNAME")
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()

    def restore() -> None:
        if before is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = before

    return restore


# ---------------------------------------------------------------------------------------------------------
# Transports. The object store (above: one packet, one call per sampler) works everywhere. On GPUs the same
# flat buffer goes learner -> samplers by a collective broadcast in a process group of its own (NCCL across
# GPUs, disaggregated; gloo on CPU, which is how it is tested here), or, for a sampler on the learner's own
# GPU (colocated), by CUDA IPC: the sampler maps the learner's buffer, nothing is copied through the host.

WEIGHT_SYNC_BACKENDS = ("object_store", "collective", "cuda_ipc")


@dataclass(frozen=True)
class WeightsLayout:
    """Names, shapes and dtype of the flat buffer: sent once when a channel opens, not with every sync."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str

    @property
    def numel(self) -> int:
        return sum(int(np.prod(s)) if s else 1 for s in self.shapes)


def layout_of(model: torch.nn.Module) -> WeightsLayout:
    named = _named_tensors(model)
    return WeightsLayout([n for n, _ in named], [_shape(p) for _, p in model.named_parameters()],
                         str(named[0][1].dtype).removeprefix("torch."))


def bucket_bounds(layout: WeightsLayout, bucket_bytes: int) -> list[tuple[int, int, int, int]]:
    """Whole parameters grouped, in order, into buckets of at most `bucket_bytes` (a larger parameter is a bucket
    of its own): `(first, stop, start, end)`, parameter indices and element offsets into the flat buffer.
    The learner and every sampler derive the same bounds from the layout, so each receiver knows which slice of
    its buffer a broadcast fills, and a ZeRO-3 learner gathers one bucket at a time, never the whole model."""
    size = torch.tensor([], dtype=getattr(torch, layout.dtype)).element_size()
    out, first, start, filled = [], 0, 0, 0
    for i, shape in enumerate(layout.shapes):
        n = int(np.prod(shape)) if shape else 1
        if i > first and (filled + n) * size > bucket_bytes:
            out.append((first, i, start, start + filled))
            first, start, filled = i, start + filled, 0
        filled += n
    if layout.shapes:
        out.append((first, len(layout.shapes), start, start + filled))
    return out


def wire_dtype(backend: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a buffer travels as in a collective: gloo has no bfloat16, so 16-bit floats go as int16 (the
    same bits); NCCL has bfloat16 and float16 but no int16 (`Short`), so they go as themselves."""
    return _VIEW_AS.get(dtype, dtype) if backend == "gloo" else dtype


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    """All parameters back to back, on the model's device (no host copy)."""
    named = _named_tensors(model)
    return torch.cat([t.reshape(-1) for _, t in named])


class CollectiveChannel:
    """A process group of its own (rank 0 = the learner, ranks 1.. = samplers), apart from the learner's
    DeepSpeed group; `broadcast` sends one bucket of rank 0's weights (`bucket_bounds`) to every other rank."""

    def __init__(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                 timeout_s: float = 600):
        import datetime

        import torch.distributed as dist

        self.dist, self.rank, self.bucket_bytes, self.backend = dist, rank, bucket_bytes, backend
        if is_loopback(host):
            keep_collectives_on_loopback()
        if rank == 0:
            store = serve_store(host, port, world, timeout_s, wait_for_workers=True)
        else:
            store = dist.TCPStore(host, port, world, False, timeout=datetime.timedelta(seconds=timeout_s))
        store = dist.PrefixStore("skill1-weights", store)
        if backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(store, rank, world)
        elif backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, rank, world, datetime.timedelta(seconds=timeout_s))
        else:
            raise ValueError(f"collective weight sync: backend must be 'nccl' or 'gloo', got {backend!r}")

    def broadcast(self, chunk: torch.Tensor) -> None:
        """One bucket from rank 0 into the same-sized (contiguous) `chunk` of every other rank, in place."""
        opts = self.dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([chunk.view(wire_dtype(self.backend, chunk.dtype))], opts).wait()

    def receive(self, flat: torch.Tensor, layout: WeightsLayout) -> int:
        """A sampler's side of one sync: every bucket into its slice of `flat`; returns the bucket count."""
        bounds = bucket_bounds(layout, self.bucket_bytes)
        for _, _, start, end in bounds:
            self.broadcast(flat[start:end])
        return len(bounds)


def digest(flat) -> str:
    """sha256 of a weights buffer (a tensor, or a packet's numpy array: the same bits hash the same): learner
    and samplers compare it to prove a sync delivered every bit."""
    import hashlib

    if isinstance(flat, torch.Tensor):
        flat = flat.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()  # read-only arrays too (object store)


def packet_from_flat(version: int, layout: WeightsLayout, flat: torch.Tensor) -> WeightsPacket:
    """A packet over a buffer that arrived by a transport (host or device tensor)."""
    return WeightsPacket(version=version, names=layout.names, shapes=layout.shapes, dtype=layout.dtype, flat=flat)


def cuda_ipc_handle(flat: torch.Tensor):
    """A picklable handle to a CUDA tensor that another process on the same GPU can map (no copy)."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not flat.is_cuda:
        raise ValueError("CUDA IPC weight sync needs the learner's weights on a GPU")
    return reduce_tensor(flat)


def gpu_key() -> str:
    """Which physical GPU this process uses: its node and the device's UUID (CUDA_VISIBLE_DEVICES renumbers
    devices per process, so index 0 in two actors may be two GPUs, or one)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    uuid = torch.cuda.get_device_properties(torch.cuda.current_device()).uuid if torch.cuda.is_available() else None
    return f"{node}:{uuid}"


def ipc_sources(sampler_keys: list[str], learner_keys: list[str]) -> list[int]:
    """For each sampler, the learner rank on its own GPU (`gpu_key`): the one whose buffer it can map by CUDA
    IPC. A handle from another GPU would map memory the sampler's device cannot address."""
    out = []
    for i, key in enumerate(sampler_keys):
        if key not in learner_keys:
            raise ValueError(f"cuda_ipc weight sync: sampler {i} shares no GPU with a learner rank (its GPU {key}, "
                             f"the learners' {learner_keys}); use placement.mode=colocate, or collective sync")
        out.append(learner_keys.index(key))
    return out


def open_cuda_ipc(handle) -> torch.Tensor:
    rebuild, args = handle
    return rebuild(*args)
