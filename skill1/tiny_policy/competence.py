"""Format competence of a policy on held-out built-in tasks: does every generation parse, is every action
admissible? Greedy, in one process (no Ray), with library-like candidates on half the episodes so that the
re-rank stage and skill-following are exercised too."""

from __future__ import annotations

import random
from collections import defaultdict

from skill1.agent.parsing import first_action
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.rollout.local import run_local
from skill1.rollout.protocol import SamplingParams
from skill1.rollout.sampler import HFSampler
from skill1.tiny_policy.warm_start import decision, demo_candidates, demonstrations
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


def decision_accuracy(sampler, settings: EpisodeSettings, num_tasks: int = 60, seed: int = 0,
                      batch_size: int = 64) -> dict[str, float]:
    """How well the policy imitates its teacher, per acting decision: on the searcher's own demonstrations of
    held-out tasks (no library, no injected mistakes, so every prompt is one the searcher reached), the share of
    prompts where the policy's greedy action is the searcher's. Success on its own rollouts mixes this with
    compounding errors; this says which decision a recipe has not taught (e.g. `take`: reading whether the
    object sought is in view)."""
    tasks = HouseholdTaskSource().sample("eval", num_tasks, seed=seed)
    demos = [d for d in demonstrations(tasks, sampler.tokenizer, settings, seed, with_library=0.0, explore=0.0,
                                       mistakes=0.0) if d.stage is Stage.ACT]
    hits: dict[str, list[float]] = defaultdict(list)
    params = SamplingParams(0.0, 1.0, settings.max_new_tokens[Stage.ACT])
    for i in range(0, len(demos), batch_size):
        batch = demos[i:i + batch_size]
        for d, out in zip(batch, sampler.generate([d.prompt_ids for d in batch], params)):
            want = sampler.tokenizer.decode(d.response_ids, skip_special_tokens=True)
            hits[decision(want)].append(float(first_action(out.text) == first_action(want)))
    out = {f"imitation/{k}": sum(v) / len(v) for k, v in sorted(hits.items())}
    out["imitation/all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return out
