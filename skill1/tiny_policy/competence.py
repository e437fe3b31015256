"""Format competence of a policy on held-out built-in tasks: does every generation parse, is every action
admissible? Greedy, in one process (no Ray), with library-like candidates on half the episodes so that the
re-rank stage and skill-following are exercised too."""

from __future__ import annotations

import random
from collections import defaultdict

from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.rollout.local import run_local
from skill1.rollout.sampler import HFSampler
from skill1.tiny_policy.warm_start import demo_candidates
from skill1.types import Episode, EpisodeSettings, Stage


def competence(episodes: list[Episode]) -> dict[str, float]:
    """Valid share per stage, success rate and episode count, and how many invalid actions repeat the
    previous acting output word for word (a greedy policy stuck on its own mistake) (pure)."""
    valid: dict[str, list[float]] = defaultdict(list)
    repeats = 0
    for e in episodes:
        previous = None
        for s in e.segments:
            valid[s.stage.value].append(float(s.valid))
            if s.stage is Stage.ACT:
                repeats += not s.valid and s.text == previous
                previous = s.text
    out = {f"{stage}/valid_rate": sum(v) / len(v) for stage, v in sorted(valid.items())}
    invalid = sum(1 - v for v in valid.get(Stage.ACT.value, []))
    out["act/invalid_first"], out["act/invalid_repeated"] = float(invalid - repeats), float(repeats)
    out["success"] = sum(e.success for e in episodes) / max(1, len(episodes))
    out["episodes"] = float(len(episodes))
    return out


def measure(model_dir: str, settings: EpisodeSettings, num_tasks: int = 60, seed: int = 0) -> dict[str, float]:
    sampler = HFSampler(model_dir, device="cpu", seed=seed)
    tasks = HouseholdTaskSource().sample("eval", num_tasks, seed=seed)
    rng = random.Random(seed)
    offered = {t.task_id: (demo_candidates(t, rng)[0] if i % 2 else []) for i, t in enumerate(tasks)}
    episodes = run_local(tasks, sampler.tokenizer, sampler, settings, lambda: HouseholdEnv(settings.max_steps),
                         retrieve=lambda task, query: offered[task.task_id])
    return competence(episodes)
