"""Asynchronous (eta = 2) vs synchronous (eta = 0 / sync loop) training throughput, in one run.

    python bench/async_bench.py [--iterations 6] [key=value ...]

Both runs use the quickstart config (tiny local Qwen2 policy, built-in env, HF sampler, DeepSpeed learner)
with the same overrides; only `rollout.mode` / `rollout.max_staleness` differ. The first iteration of each
run (actor start-up, first DeepSpeed step) is left out of the rates. Printed side by side:

  episodes/s           trained episodes per wall-second
  sampler / pool busy  share of wall time each had a call in flight (generation / environment)
  learner busy         share of wall time the learner spent in `update`
  sync                 weight-sync time: share of the iteration and ms per MB of weights
  learner / sampler    tokens/s (sampler: generated tokens per sampler-busy second) and peak learner RSS
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from skill1.config import load_config  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(mode: str, eta: int, iterations: int, extra: list[str], out: str) -> dict:
    from skill1.loop.train import train

    cfg = load_config(os.path.join(ROOT, "pipelines/configs/quickstart.yaml"), [
        f"output_dir={out}", f"name=bench-{mode}-{eta}", f"rollout.mode={mode}", f"rollout.max_staleness={eta}",
        f"algorithm.iterations={iterations}", "logging.wandb_mode=disabled", "logging.progress=false",
        "save_every=0", *extra])
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()][1:]  # skip warm-up
    weights_mb = sum(os.path.getsize(os.path.join(result.checkpoint, f)) for f in os.listdir(result.checkpoint)
                     if f.endswith(".safetensors")) / 2**20
    span = sum(m["time/iteration_s"] for m in lines)

    def mean(key: str) -> float:
        vals = [m[key] for m in lines if key in m]
        return sum(vals) / len(vals) if vals else float("nan")

    sampler_busy_s = sum(m.get("time/sampler_busy", 0.0) * m["time/iteration_s"] for m in lines)
    return {
        "episodes_s": sum(m["rollout/episodes"] for m in lines) / span,
        "iteration_s": span / len(lines),
        "sampler_busy": mean("time/sampler_busy"), "pool_busy": mean("time/pool_busy"),
        "learner_busy": mean("time/learner_busy"),
        "sync_frac": sum(m["time/sync_s"] for m in lines) / span,
        "sync_ms_per_mb": 1000 * mean("time/sync_s") / weights_mb,
        "learner_tok_s": mean("learner/tokens_per_s"),
        "sampler_tok_s": sum(m["rollout/tokens_generated"] for m in lines) / max(sampler_busy_s, 1e-9),
        "peak_rss_gb": max(m.get("learner/peak_rss_gb", float("nan")) for m in lines),
        "staleness": mean("async/staleness_mean") if mode == "async" else 0.0,
        "wall_s": wall,
    }


def main() -> None:
    args = sys.argv[1:]
    iterations = 6
    if args[:1] == ["--iterations"]:
        iterations, args = int(args[1]), args[2:]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for mode, eta in (("sync", 0), ("async", 2)):
            print(f"running {mode} (eta={eta}) for {iterations} iterations ...", flush=True)
            rows.append((f"{mode} eta={eta}", run(mode, eta, iterations, args, out)))
    keys = [("episodes/s", "episodes_s", "{:.3f}"), ("s/iteration", "iteration_s", "{:.1f}"),
            ("sampler busy", "sampler_busy", "{:.0%}"), ("pool busy", "pool_busy", "{:.1%}"),
            ("learner busy", "learner_busy", "{:.0%}"), ("sync share", "sync_frac", "{:.2%}"),
            ("sync ms/MB", "sync_ms_per_mb", "{:.2f}"), ("learner tok/s", "learner_tok_s", "{:.0f}"),
            ("sampler tok/s", "sampler_tok_s", "{:.0f}"), ("learner peak RSS GB", "peak_rss_gb", "{:.2f}"),
            ("mean staleness", "staleness", "{:.2f}"), ("run wall s", "wall_s", "{:.0f}")]
    print(f"\n{os.cpu_count()} CPUs; overrides: {' '.join(args) or '(none)'}; first iteration excluded\n")
    print(f"{'':22}" + "".join(f"{name:>16}" for name, _ in rows))
    for label, key, fmt in keys:
        print(f"{label:22}" + "".join(f"{fmt.format(r[key]):>16}" for _, r in rows))
    ratio = rows[1][1]["episodes_s"] / rows[0][1]["episodes_s"]
    print(f"\nasync / sync episodes/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
