"""The README's quickstart figures, measured and written by a script, so they are regenerated rather than drift.

    python bench/readme_figures.py            # build the tiny policy if missing, run the quickstart, both timed;
                                              # write docs/quickstart_run.json and the README's figures block
    python bench/readme_figures.py --no-run   # re-render the block from docs/quickstart_run.json
    python bench/readme_figures.py --run-dir runs/quickstart --no-write   # print the block of an existing run

The block sits between `<!-- figures:quickstart -->` and `<!-- /figures:quickstart -->` in README.md. Its
numbers come from the run's own files: `metrics.jsonl` (training and held-out evaluation lines), the model's
`skill1_provenance.json` (`build_s`: how long the build took), and the wall time of `skill1 train` measured
here. Run it on a quiet machine: other work on the cores slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines/configs/quickstart.yaml"
RECORD = ROOT / "docs/quickstart_run.json"
README = ROOT / "README.md"
START, END = "<!-- figures:quickstart -->", "<!-- /figures:quickstart -->"


def _skill1(*args: str) -> float:
    """Run `skill1 ARGS` from the repository root; its wall time in seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "skill1.cli", *args], cwd=ROOT, check=True)
    return time.monotonic() - started


def measure() -> dict:
    """Build the tiny policy if it is missing, then run the quickstart; the run's paths and wall times."""
    sys.path.insert(0, str(ROOT))
    from skill1.config import load_config

    cfg = load_config(CONFIG, [])
    model = ROOT / cfg.model.path
    built_here = not (model / "config.json").is_file()
    if built_here:
        _skill1("model", "init-tiny", "--config", str(CONFIG))
    train_s = _skill1("train", "--config", str(CONFIG))
    return {"run_dir": str((ROOT / cfg.output_dir / cfg.name).relative_to(ROOT)),
            "model_dir": str(model.relative_to(ROOT)), "model_built_here": built_here, "train_s": round(train_s, 1)}


def read_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, held-out evaluation lines) of a run's metrics.jsonl, each in step order."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = sorted((m for m in lines if "rollout/reward" in m), key=lambda m: m["step"])
    held = sorted((m for m in lines if "eval/success" in m), key=lambda m: m["step"])
    if not train or not held:
        raise SystemExit(f"{run_dir}/metrics.jsonl: no training or no held-out lines (did the run finish?)")
    return train, held


def summarize(run_dir: Path, model_dir: Path) -> dict:
    train, held = read_run(run_dir)
    provenance = json.loads((model_dir / "skill1_provenance.json").read_text())
    steps = [m["time/iteration_s"] for m in train]
    last = train[-1]
    window = max(1, len(train) // 3)
    from_second = [m["select/retrieval_rate"] for m in train[1:]]
    return {
        "iterations": len(train), "episodes_per_iteration": int(train[0]["rollout/episodes"]),
        "eval_tasks": int(held[0]["eval/episodes"]),
        "build_s": provenance.get("build_s"), "warm_start_steps": provenance.get("warm_start_steps"),
        "first_iteration_s": round(steps[0], 1),
        "later_iteration_s": [round(min(steps[1:] or steps), 1), round(max(steps[1:] or steps), 1)],
        "held_out": [{"after": m["step"], "success": m["eval/success"], "valid": m["eval/valid_action_rate"]}
                     for m in held],
        "train_success_first": sum(m["rollout/success"] for m in train[:window]) / window,
        "train_success_last": sum(m["rollout/success"] for m in train[-window:]) / window,
        "window": window,
        "retrieval_rate_from_2": min(from_second) if from_second else None,
        "library_size": int(last["library/size"]), "mean_utility": last.get("library/mean_utility"),
        "chosen_utility": last.get("select/chosen_utility"), "best_utility": last.get("select/best_utility"),
        "chose_best": [round(min(m.get("select/chose_best", 0.0) for m in train[1:] or train), 2),
                       round(max(m.get("select/chose_best", 0.0) for m in train[1:] or train), 2)],
    }


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def render(record: dict) -> str:
    s, run = record["summary"], record["run"]
    held = s["held_out"]
    n = s["eval_tasks"]
    header = " | ".join(["held-out (%d tasks, greedy)" % n] + ["before" if h["after"] == 0 else f"after {h['after']}"
                                                               for h in held])
    rule = "|".join(["---"] * (len(held) + 1))
    valid = " | ".join(["valid, admissible actions"] + [f"{h['valid']:.2f}" for h in held])
    success = " | ".join(["success"] + [f"{h['success']:.3f}" for h in held])
    before, after = held[0]["success"], held[-1]["success"]
    moved = (f"Held-out success went from {before:.3f} to {after:.3f} ({round(before * n)} → {round(after * n)} "
             f"of {n} tasks).")
    first, last = s["later_iteration_s"]
    lines = [
        f"Measured by `python bench/readme_figures.py` on {record['date']} ({record['machine']}); its record is "
        f"`docs/quickstart_run.json`.",
        "",
        f"- Building the tiny policy took **{_minutes(s['build_s'])}** (tokenizer, demonstrations, "
        f"{s['warm_start_steps']:,} warm-start steps; once per machine).",
        f"- The run itself took **{_minutes(run['train_s'])}**: Ray start, {s['iterations']} asynchronous "
        f"iterations of {first:g}–{last:g} s after a first of {s['first_iteration_s']:g} s, "
        f"{s['episodes_per_iteration']} episodes each, and {len(held)} held-out evaluations.",
        f"- A first quickstart on a fresh machine therefore takes about **{_minutes((s['build_s'] or 0) + run['train_s'])}**"
        f" after install (the goal is 10 min); later ones take the run's time." if run.get("train_s") else
        "- (the run's wall time was not measured: summarised from an existing run dir)",
        "",
        f"| {header} |", f"|{rule}|", f"| {valid} |", f"| {success} |",
        "",
        f"{moved} Training success (temperature 1) averaged {s['train_success_first']:.2f} over the first "
        f"{s['window']} iterations and {s['train_success_last']:.2f} over the last {s['window']}.",
    ]
    if s["retrieval_rate_from_2"] is not None:
        share = ("every episode" if s["retrieval_rate_from_2"] >= 1 else
                 f"at least {s['retrieval_rate_from_2']:.0%} of the episodes in each iteration")
        lines += ["", f"From iteration 2 on, {share} retrieved candidates (`select/retrieval_rate`). The library "
                      f"ended with "
                      f"{s['library_size']} skills, mean utility {s['mean_utility']:.3f}. In the last iteration the "
                      f"chosen skill's utility was {s['chosen_utility']:.3f} against the best candidate's "
                      f"{s['best_utility']:.3f}, and `select/chose_best` ranged over {s['chose_best'][0]:.2f}–"
                      f"{s['chose_best'][1]:.2f} per iteration."]
    return "\n".join(lines)


def write_readme(block: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} … {END} block")
    head, rest = text.split(START, 1)
    README.write_text(f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="re-render from docs/quickstart_run.json")
    parser.add_argument("--run-dir", help="summarise this existing run instead of running the quickstart")
    parser.add_argument("--model-dir", default="runs/models/tiny-env", help="with --run-dir: its policy")
    parser.add_argument("--no-write", action="store_true", help="print the block; leave README and record alone")
    args = parser.parse_args(argv)
    if args.no_run:
        record = json.loads(RECORD.read_text())
    else:
        run = measure() if args.run_dir is None else {"run_dir": args.run_dir, "model_dir": args.model_dir,
                                                      "model_built_here": None, "train_s": None}
        record = {"date": date.today().isoformat(),
                  "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
                  "run": run, "summary": summarize(ROOT / run["run_dir"], ROOT / run["model_dir"])}
    block = render(record)
    print(block)
    if not args.no_write:
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
        write_readme(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
