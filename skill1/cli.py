"""`skill1 train | eval | model init-tiny | library ...` — the command line, one function per command.

The `library` sub-commands (ls, show, search, diff, restore, export) live in `skill1.library_cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from skill1.checkpoint import CheckpointError
from skill1.config import ConfigError, load_config
from skill1.envs.base import EnvDataError
from skill1.library_cli import CommandError
from skill1.library_cli import register as register_library
from skill1.plan import LayoutDoesNotFit
from skill1.run_dir import OwnershipError


def train_config(args) -> tuple:
    """(config, mode) for `skill1 train`: mode False, a fresh run from --config; True, the run dir's own config
    to resume; "restart", --auto-resume on a run dir of ours with no checkpoint yet (it starts over)."""
    resume = args.resume
    if args.auto_resume:  # a retried job (preemption, RayJob backoffLimit) continues its run, else starts it
        if not args.config:
            raise ConfigError("--auto-resume: needs --config (it names the run dir to look in)")
        from skill1.checkpoint import latest_checkpoint

        cfg = load_config(args.config, args.overrides)
        if latest_checkpoint(cfg.run_dir) is None:
            # the same run: a first attempt that died before its first checkpoint is started over
            return cfg, "restart"
        resume = str(cfg.run_dir)
    elif resume and args.config:
        raise ConfigError("--resume: the run's own config.yaml is used; pass changes as key=value overrides")
    if resume:
        return _run_config(resume, args.overrides, flag="--resume"), True
    cfg = load_config(args.config, args.overrides)
    sweep_run = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if sweep_run:  # a wandb sweep agent's run: its own run dir, not the config's shared one
        cfg = load_config(args.config, [*args.overrides, f"name={cfg.name}-{sweep_run}"])
    return cfg, False


def _train(args) -> int:
    from skill1.loop.train import train

    cfg, mode = train_config(args)
    if cfg.placement.gpu_memory_gb:  # pre-flight: refuse a layout that cannot fit, before any actor starts
        from skill1.plan import check

        check(cfg, cfg.placement.gpu_memory_gb)
    result = train(cfg, resume=mode is True, restart=mode == "restart")
    if result.stopped_at is not None:
        print(f"\nStopped by a signal after iteration {result.stopped_at}; checkpoint saved.\n"
              f"Continue it:  skill1 train --resume {result.run_dir}")
        return 128 + 15  # what a SIGTERM-ed process reports: the run did not finish
    tags = ", ".join(sorted(result.library_tags, key=lambda t: (result.library_tags[t], len(t), t)))
    print(f"\nRun finished: {result.run_dir}\n"
          f"  policy checkpoint  {result.checkpoint}\n"
          f"  skill library      {result.library_path}  (snapshots: {tags or 'none'})\n"
          f"  metrics            {result.metrics_path}\n"
          f"  wandb (offline)    {result.wandb_dir or 'disabled'}\n"
          f"Evaluate it:  skill1 eval --run {result.run_dir}")
    return 0


# Keys of a run's own config.yaml that are never taken from it: a received run directory is data, and these
# would run a program it names. The user passes them again as overrides to use them.
UNTRUSTED_RUN_KEYS = ("rollout.sampler_python",)


def _run_config(run: str, overrides: list[str], flag: str = "--run"):
    """The config of run directory `run`, placed where the directory is now (whatever output_dir / name it was
    made with), without the keys that would execute something unless the user passes them again."""
    run_path = Path(run).resolve()
    path = run_path / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{flag}: {run} has no config.yaml (is it a run directory made by skill1 train?)")
    given = {o.lstrip("-").split("=", 1)[0] for o in overrides}
    dropped = [f"{k}=null" for k in UNTRUSTED_RUN_KEYS if k not in given]
    return load_config(path, [*dropped, *overrides, f"output_dir={run_path.parent}", f"name={run_path.name}"])


def _eval(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from skill1.evaluate import CheckpointMissing, LibraryTagError, evaluate

    try:
        report = evaluate(_run_config(args.run, args.overrides), args.checkpoint, args.library_tag)
    except (LibraryTagError, CheckpointMissing) as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Evaluation: {report['episodes']} episodes, library version {report['library_version']}")
    table.add_column("task family")
    table.add_column("episodes", justify="right")
    table.add_column("success", justify="right")
    for fam, rate in report["success_by_family"].items():
        table.add_row(fam, str(report["episodes_by_family"][fam]), f"{rate:.3f}")
    table.add_row("all", str(report["episodes"]), f"{report['success']:.3f}", style="bold")
    Console().print(table)
    print(f"valid action rate {report['valid_action_rate']:.3f}; written to {Path(args.run) / 'eval.json'}")


def _plan(args) -> int:
    from skill1.plan import ModelShape, budget, layout_of_config, render

    cfg = load_config(args.config, args.overrides)
    gb = args.gpu_gb or cfg.placement.gpu_memory_gb
    if not gb:
        raise ConfigError("skill1 plan: give the GPU memory (--gpu-gb 80, or placement.gpu_memory_gb)")
    shape = ModelShape.from_dir(cfg.model.path)
    bud = budget(shape, layout_of_config(cfg, gb))
    print(render(shape, layout_of_config(cfg, gb), bud))
    return 2 if bud.problems() else 0


def _init_tiny(args) -> None:
    import dataclasses

    from skill1.settings import episode_settings
    from skill1.tiny_policy.provision import ensure_policy

    cfg = load_config(args.config, args.overrides)
    model = dataclasses.replace(cfg.model, path=args.out or cfg.model.path)
    if args.warm_start_steps is not None:
        model = dataclasses.replace(model, warm_start_steps=args.warm_start_steps)
    if (Path(model.path) / "config.json").is_file() and not args.force:
        raise CommandError(f"{model.path} already holds a model (a warm start takes minutes to redo): pass --force "
                           "to replace it, or --out DIR to build another")
    path = ensure_policy(model, force=True, settings=episode_settings(cfg, training=True))
    print(f"tiny policy written to {path}")


DESCRIPTION = """Skill1: train an LLM agent that selects, uses and distills skills from one task reward.

  skill1 train --config pipelines/configs/quickstart.yaml     the quickstart (local Ray, tiny policy, built-in env)
  skill1 eval --run runs/quickstart                          held-out success of its final checkpoint
  skill1 library ls --run runs/quickstart                    the skills it wrote

`skill1 COMMAND --help` for each command."""


def _command(sub, name: str, summary: str, details: str = ""):
    """A sub-command whose --help opens with what it does (its one-line summary, then any details)."""
    return sub.add_parser(name, help=summary, description=summary + (f"\n\n{details}" if details else ""),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from skill1.config import Skill1Config

    defaults = Skill1Config()
    p = argparse.ArgumentParser(prog="skill1", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="also show Ray's and wandb's own info lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = _command(sub, "train", "train a policy (local Ray by default; RAY_ADDRESS to join a cluster)",
                 "A run writes runs/<name>/: config.yaml, metrics.jsonl, the skill library, checkpoints/ and\n"
                 "eval.json. Any config key can be overridden as key=value (pipelines/configs/*.yaml list them).")
    t.add_argument("--config", help="YAML config (e.g. pipelines/configs/quickstart.yaml)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue runs/<name> from its newest checkpoint (overrides may raise algorithm.iterations)")
    t.add_argument("--auto-resume", action="store_true",
                   help="with --config: resume the config's run dir if it has a checkpoint, else start it (for "
                        "jobs that are retried after preemption)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. learner.lr=1e-5")
    t.set_defaults(fn=_train)
    e = _command(sub, "eval", "evaluate a run's policy checkpoint and library on held-out tasks",
                 "Greedy and seeded per episode: the same checkpoint, library tag and tasks give the same episodes.\n"
                 f"Tasks: env.eval_tasks (default {defaults.env.eval_tasks}) of the held-out split, seeded by "
                 f"env.eval_seed. Writes <run>/eval.json.")
    e.add_argument("--run", required=True, help="run directory (runs/<name>)")
    e.add_argument("--checkpoint", help="policy dir (default: <run>/checkpoints/final)")
    e.add_argument("--library-tag", help="library snapshot (default: the newest iter-k tag)")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. env.eval_tasks=60")
    e.set_defaults(fn=_eval)
    pl = _command(sub, "plan", "per-GPU memory budget of a config's layout (weights, gradients, optimizer, "
                               "reference, activations, vLLM): exits 2 when it cannot fit")
    pl.add_argument("--config", help="YAML config (e.g. pipelines/configs/alfworld_qwen2.5_7b.yaml)")
    pl.add_argument("--gpu-gb", type=float, help="memory of one GPU in GB (default: placement.gpu_memory_gb)")
    pl.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. learner.micro_batch_tokens=4096")
    pl.set_defaults(fn=_plan)
    m = _command(sub, "model", "build the tiny local policy").add_subparsers(dest="model_command", required=True,
                                                                               metavar="MODEL_COMMAND")
    mi = _command(m, "init-tiny", "build the tiny local Qwen2-architecture policy: an env-trained tokenizer, a "
                                  "random init, a warm start on searcher demonstrations",
                  "`skill1 train` builds it by itself the first time (model.create_tiny_if_missing); this command\n"
                  "builds it again on purpose, e.g. after changing model.* keys. An existing model is kept unless\n"
                  "--force is given.")
    mi.add_argument("--config", help="YAML config whose model.* and env.* keys to use (default: the built-in defaults)")
    mi.add_argument("--out", help=f"model dir (default: the config's model.path, {defaults.model.path})")
    mi.add_argument("--warm-start-steps", type=int,
                    help=f"SFT steps on searcher demos (default: the config's model.warm_start_steps, "
                         f"{defaults.model.warm_start_steps}; 0: a random policy)")
    mi.add_argument("--force", action="store_true", help="replace a model already at that path")
    mi.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.hidden_size=128")
    mi.set_defaults(fn=_init_tiny)
    register_library(sub)
    return p


USER_ERRORS = (ConfigError, CommandError, EnvDataError, CheckpointError, OwnershipError, LayoutDoesNotFit)


def _actor_errors() -> tuple:
    """Errors a learner actor raises for the user (imported late: they pull in torch)."""
    from skill1.learner.learner import NonFiniteUpdates
    from skill1.learner.safe_load import UnsafeCheckpoint

    return (NonFiniteUpdates, UnsafeCheckpoint)


def quiet_console() -> None:
    """Our lines, not our libraries': Ray's INFO lines ("Started a local Ray instance", its auth notice) and
    wandb's start/finish banners and history dump (`skill1 eval` printed ~27 lines before its table) stay out
    of the console; warnings and errors still show. `--verbose` keeps them all."""
    import logging

    import ray  # noqa: F401  (first: importing Ray sets its logger's level, which would undo ours)

    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("ray").setLevel(logging.WARNING)
    # Ray's notice that token auth is on (its default) is a warning; that it is *off* stays visible. (Setting
    # RAY_AUTH_MODE=token instead would silence it too, but Ray reads the mode when imported: set afterwards,
    # the GCS it starts wanted a token that this process never sent.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # An inherited WANDB_SERVICE (a notebook, a sweep agent, a test runner that used wandb) would register
    # this run's stream in that parent's service, which outlives us: after a kill -9 the stream stays
    # registered and a resume (or `eval`, which logs into the run) is refused ("run ID ... is in use").
    os.environ.pop("WANDB_SERVICE", None)
    if not args.verbose:
        quiet_console()
    try:
        rc = args.fn(args)
        return rc if isinstance(rc, int) else 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # raised inside an actor: Ray wraps it; a user-facing cause is still one line
        cause = getattr(e, "cause", None)
        if isinstance(cause, USER_ERRORS + _actor_errors()):
            print(f"error: {str(cause).splitlines()[0]}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
