"""What only a GPU can show, in one short run (scripts/gpu_check.sh wraps it): bf16 learner steps under DeepSpeed
ZeRO-2 and ZeRO-3 with the attention kernel in use, the planner's estimate against the measured peak, CUDA-IPC
weight sync into a second process, and an NCCL weight broadcast in bf16. Writes a JSON report.

    python scripts/gpu_check.py all --out gpu_check.json      # every part, each learner in its own process
    python scripts/gpu_check.py learner --zero 3 --out z3.json  # one part

On a machine without CUDA it runs the same code on CPU (gloo, fp32 learner) so the script itself can be tried
anywhere; its numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ~0.29 B parameters with Qwen's 151,936-wide vocabulary: big enough that the memory terms are visible
SPEC = dict(hidden_size=1024, num_layers=12, num_heads=16, num_kv_heads=4, intermediate_size=2816)
TOKENS, GENERATED, SAMPLES, MICRO = 1024, 512, 16, 4096


def build_model(out: str, tokenizer_dir: str, small: bool) -> str:
    """A random Qwen2 of SPEC saved with the real save_pretrained (loaded back by the learner's from_pretrained)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from skill1.models.tiny import TinyModelSpec, tiny_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = TinyModelSpec(**(dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
                            if small else SPEC))
    config = tiny_config(spec, vocab_size=151936, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def samples(vocab_limit: int = 1000):
    from skill1.types import Stage, TrainSample

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(SAMPLES):
        ids = torch.randint(0, vocab_limit, (TOKENS,), generator=g).tolist()
        out.append(TrainSample(ids, TOKENS - GENERATED, (-torch.rand(GENERATED, generator=g) * 3).tolist(),
                               float(torch.randn(1, generator=g)), Stage.ACT))
    return out


def _ipc_child(handle, queue) -> None:
    from skill1.weights.wire import digest, open_cuda_ipc

    flat = open_cuda_ipc(handle)
    queue.put({"digest": digest(flat), "device": str(flat.device), "numel": flat.numel()})


def learner_part(model_dir: str, zero: int, lean: bool = False) -> dict:
    """One bf16 learner rank: an update, the weights read whole, the planner's estimate vs the peak, CUDA IPC."""
    import multiprocessing as mp

    from skill1.config import LearnerConfig
    from skill1.learner.learner import Learner
    from skill1.models.tiny import attention_implementation
    from skill1.plan import Layout, ModelShape, budget

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    # lean: what the 7B configs turn on to fit (activation checkpointing, the reference sharded like the policy)
    cfg = LearnerConfig(backend="deepspeed", zero_stage=zero, lr=1e-5, kl_coef=0.01, micro_batch_tokens=MICRO,
                        weight_sync_bucket_mb=64, gradient_checkpointing=lean, shard_reference=lean and zero == 3)
    t0 = time.perf_counter()
    learner = Learner(model_dir, cfg, dtype=dtype)
    init_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    layout = learner.weights_layout()
    before = learner.weights_digest()
    t0 = time.perf_counter()
    metrics = learner.update(samples(), recompute_proximal=True)
    update_s = time.perf_counter() - t0
    after = learner.weights_digest()
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    shape = ModelShape.from_dir(model_dir)
    plan = budget(shape, Layout(gpu_gb=141, ranks=1, zero_stage=zero, dtype_bytes=2 if cuda else 4,
                                fp32_grad_accum=cfg.fp32_grad_accum, kl=True, micro_batch_tokens=MICRO,
                                gradient_checkpointing=cfg.gradient_checkpointing,
                                shard_reference=cfg.shard_reference,
                                zero_bucket_elements=int(cfg.zero_bucket_elements), weight_sync="cuda_ipc",
                                bucket_bytes=64 * 2**20, sampler_gpu_memory_utilization=0))
    planned = sum(v for k, v in plan.learner.items() if k != "runtime")  # the CUDA context is not allocator memory
    out = {"zero_stage": zero, "dtype": dtype, "gradient_checkpointing": cfg.gradient_checkpointing,
           "shard_reference": cfg.shard_reference, "attention": attention_implementation("cuda" if cuda else "cpu",
                                                                                       getattr(torch, dtype)),
           "params": shape.params, "init_s": init_s, "update_s": update_s,
           "loss_finite": all(v == v for k, v in metrics.items() if k.startswith("learner/")),
           "steps": metrics["learner/steps"], "tokens_per_s": metrics["learner/tokens_per_s"],
           "weights_changed": before != after,
           "layout_whole": [list(s) for s in layout.shapes[:3]], "layout_numel": layout.numel,
           "layout_matches_params": layout.numel == shape.params,
           "peak_allocated_gib": peak / 2**30, "planned_gib": planned / 2**30,
           "planned_terms_gib": {k: v / 2**30 for k, v in plan.learner.items()},
           "plan_is_upper_bound": (peak <= planned) if cuda else None}
    if cuda:  # CUDA IPC: a second process maps rank 0's flat buffer and hashes it
        handle = learner.cuda_ipc_weights()
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_ipc_child, args=(handle, queue))
        child.start()
        got = queue.get(timeout=180)
        child.join(timeout=60)
        out["cuda_ipc"] = {**got, "equal_to_learner": got["digest"] == after, "exitcode": child.exitcode}
    return out


def nccl_part() -> dict:
    """The collective weight channel over NCCL (one rank: a single GPU cannot hold two NCCL ranks) in bf16; and
    what today's fix avoids: NCCL refuses int16, the dtype gloo needs for bf16."""
    from skill1.learner.engine import free_port as _free_port
    from skill1.weights.wire import CollectiveChannel

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    torch.cuda.set_device(0)
    channel = CollectiveChannel("127.0.0.1", _free_port(), 0, 1, "nccl", 2**20)
    flat = torch.arange(3_000_000, device="cuda").to(torch.bfloat16)
    out = {}
    try:
        channel.broadcast(flat)
        torch.cuda.synchronize()
        out["bf16_broadcast"] = "ok"
    except Exception as e:  # noqa: BLE001 - the report says what failed
        out["bf16_broadcast"] = f"{type(e).__name__}: {e}"[:300]
    opts = torch.distributed.BroadcastOptions()
    try:
        channel.pg.broadcast([flat.view(torch.int16)], opts).wait()
        torch.cuda.synchronize()
        out["int16_broadcast"] = "ok (NCCL took int16)"
    except Exception as e:  # noqa: BLE001
        out["int16_broadcast"] = f"refused: {type(e).__name__}: {str(e).splitlines()[0]}"[:300]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["all", "learner", "nccl"])
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--lean", action="store_true", help="gradient checkpointing + sharded reference (ZeRO-3)")
    p.add_argument("--model", help="model dir (default: build one under /tmp)")
    p.add_argument("--tokenizer", default=str(ROOT / "runs" / "models" / "tiny-env"))
    p.add_argument("--small", action="store_true", help="a 2-layer model (a quick try of the script on CPU)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.small:  # sizes for a CPU try of the script
        global TOKENS, GENERATED, SAMPLES, MICRO
        TOKENS, GENERATED, SAMPLES, MICRO = 64, 32, 4, 128
    if args.part == "learner":
        result = learner_part(args.model, args.zero, args.lean)
    elif args.part == "nccl":
        result = nccl_part()
    else:
        result = {"torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
        try:
            import deepspeed

            result["deepspeed"] = deepspeed.__version__
        except Exception as e:  # noqa: BLE001
            result["deepspeed"] = f"not importable: {e}"
        model = args.model or build_model("/tmp/skill1-gpu-check-model", args.tokenizer, args.small)
        for key, part, extra in (("learner2", "learner", ["--zero", "2"]), ("learner3", "learner", ["--zero", "3"]),
                                 ("learner3_lean", "learner", ["--zero", "3", "--lean"]), ("nccl", "nccl", [])):
            tmp = f"/tmp/gpu-check-{key}.json"
            t0 = time.perf_counter()
            small = ["--small"] if args.small else []
            proc = subprocess.run([sys.executable, __file__, part, *extra, *small, "--model", model, "--out", tmp],
                                  capture_output=True, text=True, timeout=300)
            result[key] = json.loads(Path(tmp).read_text()) if proc.returncode == 0 else \
                {"failed": proc.returncode, "stderr": proc.stderr[-3000:]}
            result[key]["wall_s"] = time.perf_counter() - t0
            print(f"[{key}] {json.dumps(result[key])[:1500]}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
