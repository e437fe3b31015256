"""Skill1 against GRPO and the ablations, side by side, on the built-in env with the tiny CPU policy.

    python bench/learning_study.py                      # the whole plan (resumes: finished runs are kept)
    python bench/learning_study.py --report             # only the report, from the results present
    python bench/learning_study.py --presets skill1 grpo --seeds 2 algorithm.iterations=10

Every run trains `pipelines/configs/cpu_study.yaml` with one preset and one seed, from the same warm-started
policy (model.path, built once), with the same budget and the same held-out tasks (env.eval_seed), as its own
`skill1 train` process (runs under `--out`). Each run's results go to
`<record>/results/<preset>-s<seed>.json` (default `docs/learning_study/`, committed) the moment it ends, so the
study resumes run by run and can be spread over several sittings and clones; a result is reused only if it
was run with the same overrides and from the same warm-started policy (its weights' sha256). The report
prints, per preset: held-out success at each evaluation point (mean and 95% interval over seeds), per-family
success at the end, step time and its ratio to GRPO's, library size, skill utilities and selection quality,
and writes `<record>/report.json` (what `notebooks/learning_study.ipynb` draws).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "configs" / "cpu_study.yaml"
PLAN = {"skill1": 3, "grpo": 3, "no_library": 3, "no_selection_credit": 2, "no_distillation_credit": 2}
ORDER = list(PLAN)
# two-sided 95% Student t quantiles by degrees of freedom (n - 1 seeds)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval) over seeds; half-width 0 for a single seed."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _export(run: Path, tag: str | None, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "skill1.cli", "library", "export", "--run", str(run), "--out", str(out)]
    if tag:
        cmd += ["--tag", tag]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return _lines(out) if done.returncode == 0 else []


def summarize_run(run: Path, preset: str, seed: int, wall_s: float) -> dict:
    """What the report needs from one finished run: its curves, timings, library and selection figures."""
    lines = _lines(run / "metrics.jsonl")
    train = [m for m in lines if "rollout/success" in m]
    evals = [m for m in lines if "eval/success" in m]
    iters = [m["time/iteration_s"] for m in train[1:]] or [m["time/iteration_s"] for m in train]
    late = _export(run, None, run / "library-final.jsonl")
    early = _export(run, "iter-2", run / "library-early.jsonl")
    sel = [m for m in train if "select/chosen_utility" in m]
    return {
        "preset": preset, "seed": seed, "wall_s": wall_s, "iterations": len(train),
        "eval_steps": [m["step"] for m in evals],
        "eval_success": [m["eval/success"] for m in evals],
        "eval_valid_action_rate": [m["eval/valid_action_rate"] for m in evals],
        "eval_success_by_family": {k.split("/", 2)[2]: v for k, v in (evals[-1].items() if evals else [])
                                   if k.startswith("eval/success/")},
        "train_success": [m["rollout/success"] for m in train],
        "retrieval_rate": [m.get("select/retrieval_rate", 0.0) for m in train],
        "step_s": statistics.fmean(iters) if iters else float("nan"),
        "learner_s": statistics.fmean(m.get("time/learner_s", 0.0) for m in train) if train else float("nan"),
        "library_size": [m.get("library/size", 0.0) for m in train],
        "chosen_utility": statistics.fmean(m["select/chosen_utility"] for m in sel) if sel else None,
        "best_utility": statistics.fmean(m["select/best_utility"] for m in sel) if sel else None,
        "chose_best": statistics.fmean(m["select/chose_best"] for m in sel) if sel else None,
        "utilities": [s["utility"] for s in late if s.get("status", "active") == "active"],
        "uses": [s["uses"] for s in late if s.get("status", "active") == "active"],
        "skills_early": [{k: s[k] for k in ("scenario", "strategy", "utility", "uses")} for s in early[:6]],
        "skills_late": [{k: s[k] for k in ("scenario", "strategy", "utility", "uses")}
                        for s in sorted(late, key=lambda s: -s["uses"])[:6]],
    }


def policy_sha256(overrides: list[str]) -> str:
    """sha256 of the warm-started policy's weights every run starts from (built first if missing)."""
    from skill1.config import load_config
    from skill1.settings import episode_settings
    from skill1.tiny_policy.provision import ensure_policy

    cfg = load_config(str(CONFIG), overrides)
    ensure_policy(cfg.model, settings=episode_settings(cfg, training=True))
    return hashlib.sha256((ROOT / cfg.model.path / "model.safetensors").read_bytes()).hexdigest()


def run_one(out: Path, record: Path, preset: str, seed: int, overrides: list[str], policy: str) -> dict:
    result_file = record / "results" / f"{preset}-s{seed}.json"
    if result_file.exists():
        kept = json.loads(result_file.read_text())
        if kept.get("overrides") == overrides and kept.get("policy_sha256") == policy:
            return kept
        print(f"{result_file.name} was run with {kept.get('overrides')} from policy "
              f"{str(kept.get('policy_sha256'))[:12]}, not {overrides} from {policy[:12]}: running it again")
    name = f"{preset}-s{seed}"
    run = out / "runs" / name
    cmd = [sys.executable, "-m", "skill1.cli", "train", "--config", str(CONFIG), f"output_dir={out / 'runs'}",
           f"name={name}", "overwrite=true", f"algorithm.preset={preset}", f"algorithm.seed={seed}",
           "logging.progress=false", *overrides]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training ...", flush=True)
    t0 = time.perf_counter()
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}).returncode
    if rc != 0:
        raise SystemExit(f"{name}: skill1 train exited {rc}; see {log}")
    summary = summarize_run(run, preset, seed, time.perf_counter() - t0)
    summary["overrides"] = overrides  # a resumed study reuses a result only if it had the same budget ...
    summary["policy_sha256"] = policy  # ... and started from the same policy
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(summary, indent=1))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: held-out success "
          f"{' -> '.join(f'{s:.2f}' for s in summary['eval_success'])}  ({summary['wall_s'] / 60:.1f} min)",
          flush=True)
    return summary


def report(results: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["preset"], []).append(r)
    grpo_step = statistics.fmean(r["step_s"] for r in by["grpo"]) if "grpo" in by else None
    table = {}
    for preset in [p for p in ORDER if p in by] + sorted(set(by) - set(ORDER)):
        runs = by[preset]
        steps = runs[0]["eval_steps"]
        curve = [interval([r["eval_success"][i] for r in runs if len(r["eval_success"]) > i])
                 for i in range(len(steps))]
        fams = sorted({f for r in runs for f in r["eval_success_by_family"]})
        step_s = statistics.fmean(r["step_s"] for r in runs)
        utils = [u for r in runs for u in r["utilities"]]
        chosen = [r["chosen_utility"] for r in runs if r["chosen_utility"] is not None]
        best = [r["best_utility"] for r in runs if r["best_utility"] is not None]
        table[preset] = {
            "seeds": len(runs), "eval_steps": steps,
            "eval_success_mean": [c[0] for c in curve], "eval_success_ci95": [c[1] for c in curve],
            "gain_mean": statistics.fmean(r["eval_success"][-1] - r["eval_success"][0] for r in runs),
            "family_success": {f: statistics.fmean(r["eval_success_by_family"].get(f, 0.0) for r in runs) for f in fams},
            "step_s": step_s, "step_ratio_to_grpo": step_s / grpo_step if grpo_step else None,
            "library_size": statistics.fmean(r["library_size"][-1] for r in runs if r["library_size"]),
            "utility_mean": statistics.fmean(utils) if utils else None,
            "utility_quartiles": statistics.quantiles(utils, n=4) if len(utils) >= 4 else None,
            "retrieval_rate_from_iter2": statistics.fmean(x for r in runs for x in r["retrieval_rate"][1:])
            if any(r["retrieval_rate"][1:] for r in runs) else 0.0,
            "chosen_utility": statistics.fmean(chosen) if chosen else None,
            "best_candidate_utility": statistics.fmean(best) if best else None,
            "chose_best": statistics.fmean(r["chose_best"] for r in runs if r["chose_best"] is not None)
            if chosen else None,
        }
    return table


def markdown_table(table: dict) -> str:
    """The README's results table (held-out success mean ± 95% half-width per evaluation point)."""
    steps = next(iter(table.values()))["eval_steps"]
    head = "| preset | seeds | " + " | ".join(f"it {s}" for s in steps) + " | gain | step | × GRPO | library |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for preset, t in table.items():
        cells = [f"{m:.3f} ± {c:.3f}" if t["seeds"] > 1 else f"{m:.3f}"
                 for m, c in zip(t["eval_success_mean"], t["eval_success_ci95"])]
        ratio = f"{t['step_ratio_to_grpo']:.2f}" if t["step_ratio_to_grpo"] else "–"
        lib = f"{t['library_size']:.0f} skills, mean u {t['utility_mean']:.2f}" if t["utility_mean"] is not None else "–"
        lines.append(f"| {preset} | {t['seeds']} | " + " | ".join(cells)
                     + f" | {t['gain_mean']:+.3f} | {t['step_s']:.1f} s | {ratio} | {lib} |")
    return "\n".join(lines)


def print_report(table: dict) -> None:
    print("\nheld-out success (greedy, same tasks; mean ± 95% interval over seeds):")
    for preset, t in table.items():
        curve = "  ".join(f"it{s}: {m:.3f}±{c:.3f}" for s, m, c in
                          zip(t["eval_steps"], t["eval_success_mean"], t["eval_success_ci95"]))
        print(f"  {preset:24s} n={t['seeds']}  {curve}  (gain {t['gain_mean']:+.3f})")
    print("\nper preset: step time, ratio to GRPO, library, selection")
    for preset, t in table.items():
        ratio = f"{t['step_ratio_to_grpo']:.2f}x" if t["step_ratio_to_grpo"] else "-"
        sel = (f"chosen u {t['chosen_utility']:.3f} vs best {t['best_candidate_utility']:.3f}, chose best "
               f"{t['chose_best']:.2f}" if t["chosen_utility"] is not None else "no selection")
        util = f"u mean {t['utility_mean']:.3f}" if t["utility_mean"] is not None else "no skills"
        print(f"  {preset:24s} step {t['step_s']:.1f}s ({ratio})  library {t['library_size']:.0f} ({util}), "
              f"retrieval {t['retrieval_rate_from_iter2']:.2f}; {sel}")
    print("\nper family, final held-out success:")
    fams = sorted({f for t in table.values() for f in t["family_success"]})
    print("  " + " " * 24 + "".join(f"{f[:12]:>14s}" for f in fams))
    for preset, t in table.items():
        print(f"  {preset:24s}" + "".join(f"{t['family_success'].get(f, 0):14.2f}" for f in fams))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "learning_study"), help="where the runs go (big: checkpoints)")
    p.add_argument("--record", default=str(ROOT / "docs" / "learning_study"),
                   help="where each run's results file and the report go (small, committed: the study resumes from "
                        "them in a later sitting or another clone)")
    p.add_argument("--presets", nargs="*", default=ORDER, choices=ORDER)
    p.add_argument("--seeds", type=int, help="seeds per preset (default: 3 for skill1/grpo/no_library, 2 else)")
    p.add_argument("--report", action="store_true", help="only print the report from the results present")
    p.add_argument("--markdown", action="store_true", help="also print the README's table")
    p.add_argument("--iterations", type=int, default=40,
                   help="iterations per run (as cpu_study.yaml; one run took 6.3-7.6 min on 2 cores, so 13 take ~90)")
    p.add_argument("overrides", nargs="*", help="config overrides for every run (the same budget for all)")
    args = p.parse_args()
    args.overrides = [f"algorithm.iterations={args.iterations}", *args.overrides]
    out, record = Path(args.out), Path(args.record)
    plan = [(preset, seed) for seed in range(max(PLAN.values()) if args.seeds is None else args.seeds)
            for preset in args.presets if args.seeds is not None or seed < PLAN[preset]]
    results = []
    policy = None if args.report else policy_sha256(args.overrides)
    for preset, seed in plan:  # seed-major: an interrupted study still has every preset's first seeds
        file = record / "results" / f"{preset}-s{seed}.json"
        if args.report:
            if file.exists():
                results.append(json.loads(file.read_text()))
            continue
        results.append(run_one(out, record, preset, seed, args.overrides, policy))
    if not results:
        raise SystemExit(f"no results under {record / 'results'} yet")
    table = report(results)
    (record / "report.json").write_text(json.dumps({"config": str(CONFIG.relative_to(ROOT)), "overrides": args.overrides,
                                                 "presets": table, "runs": results}, indent=1))
    print_report(table)
    if args.markdown:
        print("\n" + markdown_table(table))
    print(f"\nreport: {record / 'report.json'}")


if __name__ == "__main__":
    main()
