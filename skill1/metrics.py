"""Per-iteration metrics: computed from episodes (pure), logged to wandb, a JSONL file and the console."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skill1.algo.advantages import EpisodeCredit
from skill1.types import Episode, Stage


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def fault_metrics(episodes: Sequence[Episode], stats) -> dict[str, float]:
    """Environment faults of one rollout: what was re-queued, restarted, or given up on."""
    return {
        "env/failed_episodes": float(sum(e.env_failed for e in episodes)),
        "env/requeued": float(stats.requeued),
        "env/faults": float(stats.env_faults),
        "env/pool_restarts": float(stats.pool_restarts),
        "env/calls": float(stats.env_calls),
        "rollout/generate_calls": float(stats.generate_calls),
    }


def episode_metrics(episodes: Sequence[Episode], credits: Sequence[EpisodeCredit] | None = None) -> dict[str, float]:
    m: dict[str, float] = {
        "rollout/reward": _mean(e.outcome for e in episodes),
        "rollout/success": _mean(float(e.success) for e in episodes),
        "rollout/episodes": float(len(episodes)),
        "act/steps": _mean(e.num_steps for e in episodes),
        "act/invalid_actions": _mean(e.num_invalid_actions for e in episodes),
        "rollout/tokens_generated": float(sum(e.tokens_generated() for e in episodes)),
    }
    by_family: dict[str, list[float]] = defaultdict(list)
    for e in episodes:
        by_family[e.task.family].append(float(e.success))
    m.update({f"rollout/success/{f}": _mean(v) for f, v in sorted(by_family.items())})
    for stage in Stage:
        segs = [s for e in episodes for s in e.segments if s.stage is stage]
        if segs:
            m[f"{stage.value}/valid_rate"] = _mean(float(s.valid) for s in segs)
            m[f"{stage.value}/segments"] = float(len(segs))
    errors: Counter[str] = Counter()
    for e in episodes:
        errors.update(e.parse_errors)
    m.update({f"{key.split('/')[0]}/invalid/{key.split('/')[1]}": float(v) for key, v in errors.items()})
    with_cands = [e for e in episodes if e.candidates]
    m["select/with_candidates"] = float(len(with_cands))
    if with_cands:
        chosen = [next(c.utility for c in e.candidates if c.skill_id == e.chosen_skill_id) for e in with_cands]
        best = [max(c.utility for c in e.candidates) for e in with_cands]
        m["select/chosen_utility"] = _mean(chosen)
        m["select/best_utility"] = _mean(best)
        m["select/chose_best"] = _mean(float(c >= b) for c, b in zip(chosen, best))
    if credits:
        m["act/advantage"] = _mean(c.utilization for c in credits)
        m["act/advantage_abs"] = _mean(abs(c.utilization) for c in credits)
        m["select/advantage"] = _mean(c.selection for c in credits)
        m["select/r_sel"] = _mean(c.r_sel for c in credits)
        m["distill/advantage"] = _mean(c.distillation for c in credits)
        m["distill/r_dis"] = _mean(c.r_dis for c in credits)
    return m


class MetricsLogger:
    """One sink for every metric: wandb (offline unless configured), `metrics.jsonl`, and the console."""

    def __init__(self, run_dir: Path, config: dict, mode: str, project: str, entity: str | None, name: str,
                 resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.run = None
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.run = wandb.init(project=project, entity=entity, name=name, dir=str(run_dir), mode=mode,
                                  config=config, reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    @property
    def wandb_dir(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
