"""The sampler actor's body: one backend (`make_sampler`) behind Ray, with the sampler side of every weight
transport (`skill1.weights.transports`): `load_weights` (object store, and a restarted sampler's rejoin),
`open_channel` + `receive_weights` (collective), `load_ipc` (CUDA IPC)."""

from __future__ import annotations

import ray

from skill1.rollout.protocol import GenerationBatch
from skill1.rollout.sampler import make_sampler


class SamplerHost:
    """Actor body for one sampler backend: generate, take weights, report its weights version."""

    def __init__(self, backend: str, model_path: str, dtype: str, seed: int, scripted_latency_s: float = 0.0,
                 engine_kwargs: dict | None = None):
        self.sampler = make_sampler(backend, model_path, dtype, seed, scripted_latency_s=scripted_latency_s,
                                    engine_kwargs=engine_kwargs)

    def generate(self, prompts, params, seeds=None, constraints=None) -> GenerationBatch:
        return GenerationBatch(self.sampler.version, self.sampler.generate(prompts, params, seeds, constraints))

    # weights calls wait out a restart (Ray retries them on the new process): loading is idempotent
    @ray.method(max_task_retries=-1)
    def load_weights(self, packet) -> int:
        self.sampler.load_weights(packet)
        return self.sampler.version

    def open_channel(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                     layout) -> None:
        from skill1.weights.wire import CollectiveChannel

        self.channel, self.layout = CollectiveChannel(host, port, rank, world, backend, bucket_bytes), layout

    def weights_digest(self) -> str | None:
        """sha256 of the weights this sampler holds, as `Learner.weights_digest` hashes its own (the scripted
        backend: of the last packet it was handed); None for a backend that keeps no copy to hash (vLLM)."""
        held = getattr(self.sampler, "weights_digest", None)
        return held() if held is not None else None

    def receive_weights(self, version: int) -> int:
        """The other end of the learner's `broadcast_weights`: one buffer, filled in place, then loaded."""
        import torch

        from skill1.weights.wire import packet_from_flat

        device = getattr(self.sampler, "device", "cuda" if torch.cuda.is_available() else "cpu")
        flat = torch.empty(self.layout.numel, dtype=getattr(torch, self.layout.dtype), device=device)
        self.channel.receive(flat, self.layout)
        self.sampler.load_weights(packet_from_flat(version, self.layout, flat))
        return self.sampler.version

    def sleep(self) -> None:
        """Free this sampler's GPU memory for a colocated learner's update (vLLM sleep mode)."""
        self.sampler.sleep()

    def wake_up(self) -> None:
        self.sampler.wake_up()

    def gpu_key(self) -> str:
        from skill1.weights.wire import gpu_key

        return gpu_key()

    def load_ipc(self, version: int, handle, layout) -> int:
        from skill1.weights.wire import open_cuda_ipc, packet_from_flat

        self.sampler.load_weights(packet_from_flat(version, layout, open_cuda_ipc(handle)))
        return self.sampler.version

    @ray.method(max_task_retries=-1)
    def torch_threads(self) -> int:
        """The threads torch computes with here (float sums depend on it: evaluation reports record it)."""
        import torch

        return torch.get_num_threads()

    def version(self) -> int:
        return self.sampler.version
