"""A Ray Tune search over Skill1's own keys, with ASHA on held-out success:

    python pipelines/tune.py --config pipelines/configs/quickstart.yaml --samples 8 \\
        --search learner.lr=loguniform:1e-4:3e-3 --search algorithm.group_size=choice:4,8 [key=value ...]
    ray job submit --working-dir . -- python pipelines/tune.py ...     (unchanged, on a cluster)

Each trial is a `skill1.rllib.Skill1` with its own run dir (`<trial dir>/run`: config, metrics, library,
checkpoints) and its own wandb run (offline unless `logging.wandb_mode=online`). ASHA compares trials on
`evaluation/eval/success`, the held-out evaluation RLlib runs every `--eval-every` iterations, and stops the
weak ones early.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_MISSING = object()


def search_space(spec: str):
    """`key=kind:args`: loguniform:LO:HI, uniform:LO:HI, choice:A,B,C, grid:A,B,C (numbers where they parse)."""
    from ray import tune

    key, _, rest = spec.partition("=")
    kind, _, args = rest.partition(":")
    values = [_number(a) for a in (args.split(",") if kind in ("choice", "grid") else args.split(":"))]
    space = {"loguniform": tune.loguniform, "uniform": tune.uniform}.get(kind)
    if space is not None and len(values) == 2:
        return key, space(*values)
    if kind == "choice":
        return key, tune.choice(values)
    if kind == "grid":
        return key, tune.grid_search(values)
    raise SystemExit(f"--search {spec}: expected key=loguniform:LO:HI, uniform:LO:HI, choice:A,B or grid:A,B")


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML of pipelines/configs/ (our keys; the search overrides them)")
    parser.add_argument("--search", action="append", default=[], help="key=kind:args (repeatable)")
    parser.add_argument("--samples", type=int, default=4, help="trials (each grid point counts this many times)")
    parser.add_argument("--eval-every", type=int, default=5, help="iterations between held-out evaluations")
    parser.add_argument("--storage", default="runs/tune", help="where Tune keeps the trials")
    parser.add_argument("--name", default="skill1-search")
    parser.add_argument("overrides", nargs="*", help="key=value for every trial")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from skill1.config import ConfigError
    from skill1.config import Skill1Config as TypedConfig
    from skill1.rllib import Skill1, Skill1Config
    from skill1.runtime import init_ray

    try:
        config = Skill1Config.from_yaml(args.config, args.overrides).evaluation(evaluation_interval=args.eval_every)
        fixed = config.typed()  # every trial's values but the searched ones
        for spec in args.search:
            key, space = search_space(spec)
            if OmegaConf.select(OmegaConf.structured(TypedConfig), key, default=_MISSING) is _MISSING:
                raise ConfigError(f"--search {key}: no such config key")
            config.put(key, space)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_ray(fixed)
    # held-out success is in every --eval-every-th result only: ASHA waits for it (it skips a result without its
    # metric), but Tune's strict check would stop the search at the first result that lacks it
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    iterations = fixed.algorithm.iterations
    scheduler = ASHAScheduler(metric="evaluation/eval/success", mode="max", max_t=iterations,
                              grace_period=max(1, args.eval_every), time_attr="training_iteration")
    results = tune.Tuner(Skill1, param_space=config, tune_config=tune.TuneConfig(
        scheduler=scheduler, num_samples=args.samples), run_config=tune.RunConfig(
        name=args.name, storage_path=str(Path(args.storage).resolve()),
        stop={"training_iteration": iterations},
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True))).fit()
    best = results.get_best_result(metric="evaluation/eval/success", mode="max", filter_nan_and_inf=True)
    print(f"best trial: {best.path}  held-out success {best.metrics.get('evaluation', {}).get('eval/success')}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
