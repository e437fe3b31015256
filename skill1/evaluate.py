"""Evaluation: a saved policy + a pinned library snapshot on held-out tasks; success per task family.

Greedy retrieval, `rollout.eval_temperature` sampling, no distillation, no library writes.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

import ray

from skill1.config import Skill1Config
from skill1.envs.registry import make_task_source
from skill1.rollout.worker import RolloutRequest
from skill1.runtime import init_ray, start_fleet
from skill1.agent.episode import EpisodeSettings
from skill1.trainer import fault_policy, retrieval_settings


def pick_library_version(library, tag: str | None) -> int | None:
    """The named tag, else the newest `iter-k` tag, else the head; None when there is nothing to retrieve."""
    tags = library.tags()
    if tag is not None:
        if tag not in tags:
            raise ValueError(f"--library-tag: no tag {tag!r} in {sorted(tags)}")
        return tags[tag]
    iters = [(int(t.split("-")[1]), v) for t, v in tags.items() if t.startswith("iter-") and t[5:].isdigit()]
    version = max(iters)[1] if iters else library.version
    return version if library.checkout(version).size() > 0 else None


def evaluate(cfg: Skill1Config, checkpoint: str | None = None, library_tag: str | None = None) -> dict:
    run_dir = cfg.run_dir
    checkpoint = checkpoint or str(run_dir / "checkpoints" / "final")
    if not (Path(checkpoint) / "config.json").is_file():
        raise FileNotFoundError(f"no policy checkpoint at {checkpoint}: train first, or pass --checkpoint DIR")
    init_ray(cfg)  # before LanceDB is imported: see trainer.train
    library_path, version = run_dir / "library", None
    if cfg.algorithm.effective().use_library and library_path.exists():
        from skill1.library import Encoder, SkillLibrary

        encoder = Encoder(cfg.library.encoder)
        version = pick_library_version(SkillLibrary.open(str(library_path), encoder.name, encoder.dim), library_tag)
    split = cfg.env.resolved_eval_split()
    tasks = make_task_source(cfg.env.name, **cfg.env.source_options()).sample(split, cfg.env.eval_tasks,
                                                                              seed=cfg.algorithm.seed)
    fleet = start_fleet(cfg, checkpoint, str(library_path), with_learner=False)
    try:
        episodes = ray.get(fleet.worker.run.remote(RolloutRequest(
            tasks, [t.task_id for t in tasks], [f"eval-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(tasks))],
            EpisodeSettings.from_config(cfg, training=False), retrieval_settings(cfg, training=False),
            cfg.rollout.eval_temperature, 1.0, version, 0, fault_policy(cfg))))
    finally:
        fleet.shutdown()
    failed = sum(e.env_failed for e in episodes)
    episodes = [e for e in episodes if not e.env_failed]  # the environment's failure, not the policy's
    if not episodes:
        raise RuntimeError(f"evaluation: all {failed} episodes failed in the environment (see the pool logs)")
    by_family: dict[str, list[float]] = defaultdict(list)
    for ep in episodes:
        by_family[ep.task.family].append(float(ep.success))
    report = {
        "checkpoint": checkpoint, "library_version": version, "split": split, "episodes": len(episodes),
        "env_failed_episodes": failed,
        "success": sum(float(e.success) for e in episodes) / len(episodes),
        "success_by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
        "episodes_by_family": {f: len(v) for f, v in sorted(by_family.items())},
        "valid_action_rate": (sum(s.valid for e in episodes for s in e.segments if s.stage.value == "act")
                              / max(1, sum(1 for e in episodes for s in e.segments if s.stage.value == "act"))),
    }
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    log_eval(cfg, report)
    return report


def eval_metrics(report: dict) -> dict[str, float]:
    """The report as `eval/...` metrics, the namespace they chart under next to the training curves."""
    m = {"eval/success": report["success"], "eval/valid_action_rate": report["valid_action_rate"],
         "eval/episodes": float(report["episodes"]), "eval/env_failed_episodes": float(report["env_failed_episodes"])}
    m.update({f"eval/success/{fam}": rate for fam, rate in report["success_by_family"].items()})
    return m


def log_eval(cfg: Skill1Config, report: dict) -> None:
    """Into the training run's own wandb run (same id, at the iteration of the newest checkpoint), when it has one."""
    from skill1.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(cfg.run_dir)
    if cfg.logging.wandb_mode == "disabled" or ckpt is None or ckpt.state.wandb_run_id is None:
        return
    import wandb

    run = wandb.init(project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity, dir=str(cfg.run_dir),
                     mode=cfg.logging.wandb_mode, id=ckpt.state.wandb_run_id, resume="allow",
                     reinit="finish_previous")
    run.define_metric("eval/*", step_metric="iteration")
    run.log({**eval_metrics(report), "iteration": ckpt.state.iteration})
    run.finish()
