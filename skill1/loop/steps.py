"""The steps of one training iteration, shared by both schedules (`sync`, `asynchronous`):

    learn     credit (pure, `skill1.algo`) → samples → one update on every learner rank
    sync      the learner's weights → every sampler, which must all then hold the new version
    library   utilities, admission, eviction, then the tag iter-k (the driver is the library's only writer)
    metrics   what the iteration logs, each key with one meaning under both schedules

A batch's episodes whose environment kept failing are not the policy's doing: they are counted
(`fault_metrics`) but neither scored nor learned from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray

from skill1.algo.advantages import assign_credit
from skill1.algo.batch import credit_inputs, episodes_to_samples
from skill1.config import Skill1Config, recompute_proximal
from skill1.metrics import episode_metrics
from skill1.settings import credit_settings
from skill1.types import Episode


@dataclass
class Batch:
    """One iteration's training input: the groups (by number) it trains and their episodes."""

    iteration: int
    seqs: list[int]
    all_episodes: list[Episode]
    learner_version: int  # the weights that train it
    episodes: list[Episode] = field(init=False)  # the trainable ones

    def __post_init__(self) -> None:
        self.episodes = [e for e in self.all_episodes if not e.env_failed]


def compute_credit(episodes: list[Episode], cfg: Skill1Config) -> list:
    """Every episode's stage advantages from its task outcome (`skill1.algo.advantages`)."""
    return assign_credit([credit_inputs(e, cfg.env.invalid_action_penalty) for e in episodes], credit_settings(cfg))


def learn(fleet, batch: Batch, cfg: Skill1Config, eta: int) -> tuple[list, dict]:
    """Credit the batch and start one update on every learner rank (an empty batch still updates: one
    policy version per iteration, always). Returns (the ranks' refs, rank 0's first; the episode metrics)."""
    credits = compute_credit(batch.episodes, cfg)
    refs = fleet.update(episodes_to_samples(batch.episodes, credits), recompute_proximal=recompute_proximal(cfg, eta))
    return refs, episode_metrics(batch.episodes, credits)


@dataclass
class WeightPush:
    """One weight sync in flight: `acks` give the version each sampler then holds."""

    version: int
    acks: list
    others: list

    @property
    def refs(self) -> list:
        return [*self.acks, *self.others]


def push_weights(fleet, version: int) -> WeightPush:
    """Start learner → every sampler (the `learner.weight_sync` transport); nothing is waited on."""
    acks, others = fleet.push_weights(version)
    return WeightPush(version, acks, others)


def finish_push(push: WeightPush) -> int:
    """Wait for a push; every sampler must hold its version, which is returned."""
    versions = ray.get(push.acks)
    ray.get(push.others)
    if set(versions) != {push.version}:
        raise RuntimeError(f"weights sync: samplers hold {versions}, the learner {push.version}")
    return push.version


def sync_weights(fleet, version: int) -> int:
    return finish_push(push_weights(fleet, version))


def update_library(library, encoder, episodes: list[Episode], iteration: int,
                   cfg: Skill1Config) -> dict[str, float]:
    """The driver is the library's only writer: utilities, admission, eviction, then the iteration tag."""
    outcomes: dict[str, list[float]] = {}
    for ep in episodes:
        if ep.chosen_skill_id is not None:
            outcomes.setdefault(ep.chosen_skill_id, []).append(ep.outcome)
    if outcomes:
        library.update_utilities(outcomes, cfg.library.alpha)
    report = None
    drafts = [ep for ep in episodes if ep.draft is not None]
    if drafts and cfg.algorithm.effective().use_library:
        report = library.add([ep.draft for ep in drafts], encoder.encode([ep.draft.scenario for ep in drafts]),
                             iteration=iteration, source_tasks=[ep.task.task_id for ep in drafts],
                             source_episodes=[ep.episode_id for ep in drafts],
                             initial_utility=cfg.library.initial_utility,
                             merge_threshold=cfg.library.merge_threshold, max_chars=cfg.library.max_skill_chars)
    retired = library.evict(cfg.library.capacity)
    version = library.tag(f"iter-{iteration}")
    compacted = 0
    if cfg.library.compact_every and iteration % cfg.library.compact_every == 0:
        compacted = library.compact()
    skills = library.all_skills()
    return {
        "library/size": float(len(skills)),
        "library/version": float(version),
        "library/accepted": float(len(report.accepted)) if report else 0.0,
        "library/merged": float(len(report.merged)) if report else 0.0,
        "library/rejected": float(len(report.rejected)) if report else 0.0,
        "library/retired": float(len(retired)),
        "library/skills_updated": float(len(outcomes)),
        "library/mean_utility": sum(s.utility for s in skills) / len(skills) if skills else 0.0,
        "library/versions_compacted": float(compacted),
    }


def busy_fractions(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Share of `wall` each sampler / pool had a call in flight: where rollout time went."""
    out: dict[str, list[float]] = {}
    for name, total in after.items():
        out.setdefault(name.split("-")[0], []).append((total - before.get(name, 0.0)) / max(wall, 1e-9))
    return {f"time/{kind}_busy": sum(v) / len(v) for kind, v in out.items()}


def timing_metrics(batch: Batch, wall: float, learner_s: float, sync_s: float, library_s: float) -> dict[str, float]:
    """The same keys, the same meanings, under both schedules. `wall`: from the end of the previous
    iteration to the end of this one (its evaluation and checkpoint included); `learner_s`: the learner's
    own update time (`learner/update_s`); `sync_s`: the weight push to every sampler; `library_s`: the
    library write and tag."""
    return {"time/iteration_s": wall, "time/learner_s": learner_s, "time/sync_s": sync_s, "time/library_s": library_s,
            "time/learner_busy": learner_s / wall, "time/episodes_per_s": len(batch.episodes) / wall}
