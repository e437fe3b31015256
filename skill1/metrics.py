"""Per-iteration metrics: computed from episodes (pure), logged to wandb, a JSONL file, Ray's metrics and the console."""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skill1.algo.advantages import EpisodeCredit
from skill1.types import Episode, Stage


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


# ALFWorld's short names for its task types (the built-in env's families are named after them)
SHORT_FAMILY = {"pick_and_place": "pick", "pick_two_obj_and_place": "pick2", "look_at_obj_in_light": "look",
                "pick_clean_then_place": "clean", "pick_heat_then_place": "heat", "pick_cool_then_place": "cool"}


def short_family(family: str) -> str:
    return SHORT_FAMILY.get(family, family)


def _stage_prefix(stage: str) -> str:
    """Metric prefix of a generation stage: query and rerank are the two halves of selection (`select/query/...`)."""
    return f"select/{stage}" if stage in (Stage.QUERY.value, Stage.RERANK.value) else stage


def fault_metrics(episodes: Sequence[Episode], stats) -> dict[str, float]:
    """Environment faults of one rollout: what was re-queued, restarted, or given up on."""
    return {
        "env/failed_episodes": float(sum(e.env_failed for e in episodes)),
        "env/requeued": float(stats.requeued),
        "env/faults": float(stats.env_faults),
        "env/pool_restarts": float(stats.pool_restarts),
        "env/calls": float(stats.env_calls),
        "rollout/generate_calls": float(stats.generate_calls),
        "rollout/sampler_restarts": float(stats.sampler_restarts),
        "rollout/regenerated": float(stats.regenerated),
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
            m[f"{_stage_prefix(stage.value)}/valid_rate"] = _mean(float(s.valid) for s in segs)
            m[f"{_stage_prefix(stage.value)}/segments"] = float(len(segs))
    errors: Counter[str] = Counter()
    for e in episodes:
        errors.update(e.parse_errors)
    m.update({f"{_stage_prefix(key.split('/')[0])}/invalid/{key.split('/')[1]}": float(v) for key, v in errors.items()})
    with_cands = [e for e in episodes if e.candidates]
    m["select/with_candidates"] = float(len(with_cands))
    m["select/retrieval_rate"] = len(with_cands) / len(episodes) if episodes else 0.0
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


# the namespaces a metric may live in: one per stage of the episode, plus the machinery around them
NAMESPACES = ("select", "act", "distill", "library", "learner", "eval", "rollout", "env", "async", "time", "policy")


def skill_panels(skills: Sequence, rows: int) -> dict:
    """wandb panels of the library as it stands: a table of sample skills (the most useful first, so a
    curve of utility has names next to it) and histograms of utility and uses."""
    import wandb

    if not skills:
        return {}
    top = sorted(skills, key=lambda s: (-s.utility, s.id))[:rows]
    panels = {"library/utility_hist": wandb.Histogram([s.utility for s in skills]),
              "library/uses_hist": wandb.Histogram([s.uses for s in skills])}
    if rows:
        panels["library/skills"] = wandb.Table(
            columns=["id", "utility", "uses", "wins", "created_iteration", "scenario", "strategy"],
            data=[[s.id, s.utility, s.uses, s.wins, s.created_iteration, s.scenario, s.strategy] for s in top])
    return panels


class RayGauges:
    """Every per-iteration metric as a `ray.util.metrics` gauge (`skill1_<namespace>_<name>`, tagged with the
    run name): Ray's metrics agent exports them to Prometheus, so they chart in the dashboard's Metrics view
    next to Ray's own. Created lazily, one per metric name."""

    def __init__(self, run: str):
        self.run, self.gauges = run, {}

    @staticmethod
    def metric_name(key: str) -> str:
        return "skill1_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)

    def set(self, metrics: dict[str, float]) -> None:
        from ray.util.metrics import Gauge

        for key, value in metrics.items():
            name = self.metric_name(key)
            if name not in self.gauges:
                self.gauges[name] = Gauge(name, description=f"Skill1 {key} (per iteration)", tag_keys=("run",))
            self.gauges[name].set(float(value), tags={"run": self.run})


class MetricsLogger:
    """One sink for every metric: wandb (offline unless configured), `metrics.jsonl`, Ray's metrics (the
    dashboard), and the console. wandb charts against `iteration` (not its own step), so a resumed run — same
    wandb id — carries on the same curves even after iterations that were rolled back."""

    def __init__(self, run_dir: Path, config: dict, mode: str, project: str, entity: str | None, name: str,
                 run_id: str | None = None, dashboard: bool = False, sample_skills: int = 8):
        self.path = run_dir / "metrics.jsonl"
        self.run, self.sample_skills = None, sample_skills
        self.gauges = RayGauges(name) if dashboard else None
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.run = wandb.init(project=project, entity=entity, name=name, dir=str(run_dir), mode=mode,
                                  config=config, id=run_id, resume="allow" if run_id else None,
                                  reinit="finish_previous")
            self.run.define_metric("iteration")
            self.run.define_metric("*", step_metric="iteration")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, metrics: dict[str, float], step: int, skills: Sequence | None = None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.gauges is not None:
            self.gauges.set({**metrics, "iteration": step})
        if self.run is not None:
            self.run.log({**metrics, "iteration": step, **skill_panels(skills or [], self.sample_skills)})

    @property
    def wandb_dir(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
