"""Learner → sampler weights as ONE flat buffer: one object-store put and one call per sync.

Per-parameter RPCs are the top complaint about weight sync in RLHF frameworks; a packet is a single
contiguous tensor plus names and shapes, which Ray moves as one zero-copy numpy buffer on a node.
(NCCL broadcast / CUDA IPC for GPU placements are issue 6; they implement the same pack/load pair.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from skill1.types import WeightsPacket

_VIEW_AS = {torch.bfloat16: torch.int16, torch.float16: torch.int16}  # numpy has no bfloat16


def _named_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    # named_parameters() lists a tied weight once (embed_tokens / lm_head share one tensor)
    return [(n, p.detach()) for n, p in model.named_parameters()]


def pack_state(model: torch.nn.Module, version: int) -> WeightsPacket:
    named = _named_tensors(model)
    dtype = named[0][1].dtype
    flat = torch.cat([t.reshape(-1).to("cpu", dtype) for _, t in named])
    array = flat.view(_VIEW_AS.get(dtype, dtype)).numpy()
    return WeightsPacket(version=version, names=[n for n, _ in named], shapes=[tuple(t.shape) for _, t in named],
                         dtype=str(dtype).removeprefix("torch."), flat=array)


def unpack(packet: WeightsPacket) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, packet.dtype)
    with warnings.catch_warnings():  # the object store hands out read-only arrays; we only read them
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(np.asarray(packet.flat))
    if dtype in _VIEW_AS:
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
