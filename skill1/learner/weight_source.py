"""The learner's end of every weight transport (a mixin of `Learner`): its weights read bucket by bucket (gathered
under ZeRO-3, where every rank must take part), as one host packet, a collective broadcast, a CUDA IPC buffer,
or a digest."""

from __future__ import annotations

import contextlib
import hashlib

import torch

from skill1.learner.engine import free_port
from skill1.types import WeightsPacket
from skill1.weights.wire import (CollectiveChannel, WeightsLayout, bucket_bounds, cuda_ipc_handle, gpu_key, host_packet,
                                 layout_of)


class WeightSource:
    """Needs the learner's `model`, `engine`, `cfg`, `rank`, `version` and `device`."""

    def _gathered(self, params: list | None = None):
        """ZeRO-3 shards parameters across ranks: gather them (all, or `params`) to read whole weights; a
        collective, so every rank enters it."""
        if self.engine is not None and self.cfg.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()) if params is None else params)
        return contextlib.nullcontext()

    def _weight_buckets(self, every_rank: bool = False):
        """Rank 0's weights bucket by bucket (`bucket_bounds` of `learner.weight_sync_bucket_mb`), as
        `(start, end, chunk)` with chunk None on the other ranks (unless `every_rank`). Under ZeRO-3 every rank
        must run it to the end: each bucket is its own gather, so at most one bucket is ever whole on a rank
        besides its shard."""
        params = [p for _, p in self.model.named_parameters()]
        bounds = bucket_bounds(self.weights_layout(), int(self.cfg.weight_sync_bucket_mb * 2**20))
        for first, stop, start, end in bounds:
            with self._gathered(params[first:stop]):
                mine = self.rank == 0 or every_rank
                chunk = torch.cat([p.detach().reshape(-1) for p in params[first:stop]]) if mine else None
                yield start, end, chunk

    def _flat_copy(self, device: str | torch.device) -> torch.Tensor | None:
        """All weights back to back in one new buffer on `device` (rank 0; None on the others)."""
        layout = self.weights_layout()
        flat = torch.empty(layout.numel, dtype=getattr(torch, layout.dtype), device=device) if self.rank == 0 else None
        for start, end, chunk in self._weight_buckets():
            if flat is not None:
                flat[start:end].copy_(chunk)
        return flat

    def get_weights(self) -> WeightsPacket | None:
        """The weights as one host packet (object-store transport); None on ranks other than 0."""
        flat = self._flat_copy("cpu")
        return host_packet(self.version, self.weights_layout(), flat) if flat is not None else None

    def weights_layout(self) -> WeightsLayout:
        return layout_of(self.model)

    def node_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def open_channel(self, host: str, port: int, world: int, backend: str, bucket_bytes: int) -> None:
        """Rank 0 joins the weights group; the other ranks only take part in the gathers (ZeRO-3)."""
        if self.rank == 0:
            self.channel = CollectiveChannel(host, port, 0, world, backend, bucket_bytes)

    def broadcast_weights(self) -> dict:
        """Rank 0 broadcasts bucket by bucket, as the samplers' `CollectiveChannel.receive` expects; every rank
        calls it under ZeRO-3 (the gathers are collectives)."""
        buckets = 0
        for _, _, chunk in self._weight_buckets():
            if chunk is not None:
                self.channel.broadcast(chunk)
                buckets += 1
        return {"version": self.version, "buckets": buckets}

    def weights_digest(self, every_rank: bool = False) -> str | None:
        """sha256 of the flat weights, as `digest` hashes a whole buffer (rank 0; None on the others unless
        `every_rank`, which lets a check see that the ranks stay in step)."""
        h = hashlib.sha256()
        for _, _, chunk in self._weight_buckets(every_rank):
            if chunk is not None:
                h.update(chunk.cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest() if self.rank == 0 or every_rank else None

    def cuda_ipc_weights(self):
        """A CUDA IPC handle to this rank's flat weights buffer on its own GPU (kept alive, and reused, until the
        next sync): colocated samplers map the buffer of the rank that shares their GPU (`gpu_key`)."""
        layout = self.weights_layout()
        if getattr(self, "_ipc_flat", None) is None:
            self._ipc_flat = torch.empty(layout.numel, dtype=getattr(torch, layout.dtype), device=self.device)
        for start, end, chunk in self._weight_buckets(every_rank=True):
            self._ipc_flat[start:end].copy_(chunk)
        return cuda_ipc_handle(self._ipc_flat)

    def gpu_key(self) -> str:
        return gpu_key()
