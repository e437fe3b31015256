"""Build the tiny policy with a given recipe and measure its format competence on held-out built-in tasks.

    python bench/warm_start_recipe.py --out /tmp/tiny model.warm_start_steps=700 model.hidden_size=256
    python bench/warm_start_recipe.py --out runs/models/tiny-env --measure-only env.max_steps=12 env.history_length=1
    python bench/warm_start_recipe.py --out runs/models/tiny-env --measure-only --check env.max_steps=8 \
        env.history_length=1      # exits 1 unless every stage is >= 95% valid under constrained acting

Prints the build time, the provenance (tokenizer, parameters, SFT losses) and, greedy on held-out tasks
(half of them with library-like candidates): each stage's valid rate and the success rate; and, on the
searcher's own demonstrations of those tasks, how often the policy's greedy action is the searcher's, per
acting decision (`imitation/take`, ...). The README's
"tiny policy" figures come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="model dir to build (replaced)")
    p.add_argument("--tasks", type=int, default=96, help="held-out tasks to measure on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure-only", action="store_true",
                   help="measure the policy already in --out, unconstrained and constrained (no build)")
    p.add_argument("--check", action="store_true",
                   help="with --measure-only: exit 1 unless every stage's valid rate, constrained (what the "
                        "quickstart and cpu_study configs run), is at least --bar (issue 13's format competence)")
    p.add_argument("--bar", type=float, default=0.95)
    p.add_argument("overrides", nargs="*", help="config overrides (model.*, env.max_steps, ...)")
    args = p.parse_args()

    import torch

    from skill1.config import load_config
    from skill1.rollout.sampler import HFSampler
    from skill1.settings import episode_settings
    from skill1.tiny_policy.competence import decision_accuracy, measure
    from skill1.tiny_policy.provision import ensure_policy

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"model.path={args.out}", *args.overrides])
    settings = episode_settings(cfg, training=True)
    from skill1.run_dir import check_model_dir_replaceable

    if args.measure_only:
        import dataclasses

        for constrain in (False, True):
            result = measure(args.out, dataclasses.replace(settings, constrain_actions=constrain), args.tasks)
            print(json.dumps({"constrain_actions": constrain, "env.max_steps": settings.max_steps,
                              "held_out": {k: round(v, 3) for k, v in result.items()}}))
        imitation = decision_accuracy(HFSampler(args.out, device="cpu"), settings, args.tasks)
        print(json.dumps({k: round(v, 3) for k, v in imitation.items()}))
        if args.check:
            below = {k: v for k, v in result.items() if k.endswith("/valid_rate") and v < args.bar}
            print(f"format competence (constrained), bar {args.bar}: " +
                  ("met" if not below else "NOT met: " + ", ".join(f"{k} {v:.3f}" for k, v in below.items())))
            raise SystemExit(1 if below else 0)
        return
    check_model_dir_replaceable(Path(args.out))  # --out replaces a tiny model built before, nothing else
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    ensure_policy(cfg.model, settings=settings)
    built = time.perf_counter() - t0
    provenance = json.loads((Path(args.out) / "skill1_provenance.json").read_text())
    t1 = time.perf_counter()
    result = measure(args.out, settings, num_tasks=args.tasks)
    result.update(decision_accuracy(HFSampler(args.out, device="cpu"), settings, args.tasks))
    print(json.dumps({"build_s": round(built, 1), "measure_s": round(time.perf_counter() - t1, 1),
                      "provenance": provenance, "held_out": result}, indent=2))


if __name__ == "__main__":
    main()
