"""Evaluation: a saved policy + a pinned library snapshot on held-out tasks; success per task family.

Greedy retrieval, `rollout.eval_temperature` sampling, no distillation, no library writes.

Reproducible: episode ids are fixed (`eval-<i>-<task id>`) and every generation's sampling seed is derived
from its episode id (`skill1.agent.episode`), so a fixed checkpoint + library snapshot on the fixed tasks
draws the same tokens run after run, at any temperature. A row's tokens do not depend on which other
episodes share its batch (each row draws from its own generator; left padding is masked and positions count
real tokens): `tests/test_sampler.py` checks greedy rows alone and beside prompts several times longer. The
logits themselves can differ in the last float bits with batch shape (~1e-7 in float32 on CPU), so a greedy
token could flip only on a top-two tie that close. The report records the sampler settings under `settings`,
with the torch thread count each sampler measured (`sampler_threads`: float sums depend on it).

The pieces are separate so the trainer can evaluate with the fleet it already has: `eval_tasks(cfg)`,
`eval_request(cfg, tasks, library_version, policy_version)` for its rollout worker, `summarize(episodes)`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import ray

from skill1.config import Skill1Config
from skill1.envs.registry import make_task_source
from skill1.runtime import init_ray, start_fleet
from skill1.settings import episode_settings, fault_policy, retrieval_settings
from skill1.types import Episode, RolloutRequest, Task

EVAL_TOP_P = 1.0


class LibraryTagError(ValueError):
    """`--library-tag` names no tag of the run's library (the CLI prints it on one line)."""


class CheckpointMissing(FileNotFoundError):
    """No policy checkpoint where evaluation looked (the CLI prints it on one line)."""


def pick_library_version(library, tag: str | None) -> int | None:
    """The named tag, else the newest `iter-k` tag, else the head; None when there is nothing to retrieve."""
    tags = library.tags()
    if tag is not None:
        if tag not in tags:
            have = ", ".join(sorted(tags, key=lambda t: (tags[t], len(t), t)))  # in version order
            raise LibraryTagError(f"--library-tag: no tag {tag!r}; the library has: {have}" if have else
                                  f"--library-tag: no tag {tag!r}; the library has no tags")
        return tags[tag]
    version = newest_iteration_tag(tags)[1]
    version = library.version if version is None else version
    return version if library.checkout(version).size() > 0 else None


def newest_iteration_tag(tags: dict[str, int]) -> tuple[int, int | None]:
    """(k, version) of the newest `iter-k` tag; (0, None) when there is none."""
    iters = [(int(t[5:]), v) for t, v in tags.items() if t.startswith("iter-") and t[5:].isdigit()]
    return max(iters) if iters else (0, None)


def eval_tasks(cfg: Skill1Config) -> list[Task]:
    """The held-out tasks: `env.eval_tasks` of them from `env.resolved_eval_split()`, seeded by `env.eval_seed`."""
    return make_task_source(cfg.env.name, **cfg.env.source_options()).sample(
        cfg.env.resolved_eval_split(), cfg.env.eval_tasks, seed=cfg.env.eval_seed)


def eval_episode_ids(tasks: list[Task]) -> list[str]:
    """Fixed per position and task: the sampling seeds derive from these, so a rerun draws the same tokens."""
    return [f"eval-{i}-{t.task_id}" for i, t in enumerate(tasks)]


def eval_request(cfg: Skill1Config, tasks: list[Task], library_version: int | None,
                 policy_version: int) -> RolloutRequest:
    """One rollout request for `tasks`: greedy retrieval, `rollout.eval_temperature`, no distillation."""
    return RolloutRequest(tasks, [t.task_id for t in tasks], eval_episode_ids(tasks),
                          episode_settings(cfg, training=False), retrieval_settings(cfg, training=False),
                          cfg.rollout.eval_temperature, EVAL_TOP_P, library_version, policy_version,
                          fault_policy(cfg))


def eval_settings(cfg: Skill1Config) -> dict:
    """What the draws depend on besides checkpoint, library and tasks: recorded in the report."""
    rollout = cfg.rollout
    return {"temperature": rollout.eval_temperature, "top_p": EVAL_TOP_P, "seed": cfg.algorithm.seed,
            "eval_seed": cfg.env.eval_seed,
            "backend": rollout.backend, "dtype": cfg.model.dtype, "torch_threads": rollout.torch_threads,
            "num_samplers": rollout.num_samplers}


def summarize(episodes: list[Episode], **extra) -> dict:
    """Success overall and per task family over the episodes the environment did not fail (those are left
    out: the environment's failure, not the policy's); `extra` keys go first in the report."""
    failed = sum(e.env_failed for e in episodes)
    episodes = [e for e in episodes if not e.env_failed]
    if not episodes:
        raise RuntimeError(f"evaluation: all {failed} episodes failed in the environment (see the pool logs)")
    by_family: dict[str, list[float]] = defaultdict(list)
    for ep in episodes:
        by_family[ep.task.family].append(float(ep.success))
    acts = [s for e in episodes for s in e.segments if s.stage.value == "act"]
    return {
        **extra, "episodes": len(episodes), "env_failed_episodes": failed,
        "success": sum(float(e.success) for e in episodes) / len(episodes),
        "success_by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
        "episodes_by_family": {f: len(v) for f, v in sorted(by_family.items())},
        "valid_action_rate": sum(s.valid for s in acts) / max(1, len(acts)),
    }


def evaluate(cfg: Skill1Config, checkpoint: str | None = None, library_tag: str | None = None) -> dict:
    run_dir = cfg.run_dir
    checkpoint = checkpoint or str(run_dir / "checkpoints" / "final")
    if not (Path(checkpoint) / "config.json").is_file():
        raise CheckpointMissing(f"no policy checkpoint at {checkpoint}: train first, or pass --checkpoint DIR")
    from skill1.checkpoint import latest_checkpoint

    trained = latest_checkpoint(run_dir)  # read (as data) before anything starts: a damaged one is one line
    init_ray(cfg)  # before LanceDB is imported: see trainer.train
    library_path, version = run_dir / "library", None
    uses_library = cfg.algorithm.effective().use_library and library_path.exists()
    if library_tag is not None and not uses_library:
        raise LibraryTagError(f"--library-tag: {run_dir} has no skill library to pin (preset "
                              f"{cfg.algorithm.preset}{'' if cfg.algorithm.effective().use_library else ': no library'})")
    if uses_library:
        from skill1.library import Encoder, SkillLibrary

        encoder = Encoder(cfg.library.encoder)
        version = pick_library_version(SkillLibrary.open(str(library_path), encoder.name, encoder.dim), library_tag)
    tasks = eval_tasks(cfg)
    fleet = start_fleet(cfg, checkpoint, str(library_path), with_learner=False)
    try:
        episodes = ray.get(fleet.worker.run.remote(eval_request(cfg, tasks, version, 0)))
        threads = ray.get([s.torch_threads.remote() for s in fleet.samplers])  # as measured, not as asked
    finally:
        fleet.shutdown()
    report = summarize(episodes, checkpoint=checkpoint, library_version=version,
                       split=cfg.env.resolved_eval_split(), settings={**eval_settings(cfg), "sampler_threads": threads})
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    log_eval(cfg, report, trained)
    return report


def eval_metrics(report: dict) -> dict[str, float]:
    """The report as `eval/...` metrics, the namespace they chart under next to the training curves."""
    m = {"eval/success": report["success"], "eval/valid_action_rate": report["valid_action_rate"],
         "eval/episodes": float(report["episodes"]), "eval/env_failed_episodes": float(report["env_failed_episodes"])}
    m.update({f"eval/success/{fam}": rate for fam, rate in report["success_by_family"].items()})
    return m


def log_eval(cfg: Skill1Config, report: dict, ckpt) -> None:
    """Into the training run's own wandb run (same id, at the iteration of `ckpt`, its newest checkpoint),
    when it has one."""
    if cfg.logging.wandb_mode == "disabled" or ckpt is None or ckpt.state.wandb_run_id is None:
        return
    import wandb

    run = wandb.init(project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity, dir=str(cfg.run_dir),
                     mode=cfg.logging.wandb_mode, id=ckpt.state.wandb_run_id, resume="allow",
                     reinit="finish_previous")
    run.define_metric("eval/*", step_metric="iteration")
    run.log({**eval_metrics(report), "iteration": ckpt.state.iteration})
    run.finish()
