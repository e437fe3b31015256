"""One episode as a state machine: select → utilize → distill.

`run_episode` is a generator: it yields requests (generate, retrieve, reset, step) and is sent their
results. The rollout worker drives many episodes at once and batches their pending requests, so one
episode reads top to bottom here while generation and environment steps are batched across episodes.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Union

from skill1.agent import parsing, prompts
from skill1.agent.action_grammar import ActionTargets
from skill1.envs.base import StepResult
from skill1.types import Candidate, Episode, EpisodeSettings, Generated, Segment, Stage, Task


@dataclass
class Generate:
    stage: Stage
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int = 0  # per-request sampling seed: an episode's draws do not depend on what it is batched with
    constraint: ActionTargets | None = None  # acting under `rollout.constrain_actions`: only admissible actions


@dataclass
class Retrieve:
    query: str


@dataclass
class Reset:
    task: Task


@dataclass
class Step:
    action: str


Request = Union[Generate, Retrieve, Reset, Step]


def run_episode(
    task: Task, episode_id: str, group_id: str, tokenizer, s: EpisodeSettings
) -> Generator[Request, Any, Episode]:
    segments: list[Segment] = []
    errors: Counter[str] = Counter()

    def generate(stage: Stage, prompt_ids: list[int], constraint: ActionTargets | None = None):
        seed = zlib.crc32(f"{episode_id}/{len(segments)}".encode())
        out: Generated = yield Generate(stage, prompt_ids, s.max_new_tokens[stage], seed, constraint)
        seg = Segment(stage, prompt_ids, out.response_ids, out.logprobs, out.text)
        segments.append(seg)
        return seg

    def invalid(seg: Segment, reason: str | None) -> None:
        if reason is not None:
            seg.valid = False
            errors[f"{seg.stage.value}/{reason}"] += 1

    # 1. Selection: query → retrieval → re-rank. Skipped while the library is empty (worker answers []).
    query, candidates, chosen = task.description, [], None
    if s.use_library:
        if s.enable_query_generation:
            seg = yield from generate(Stage.QUERY, prompts.query_prompt(tokenizer, task.description))
            query, reason = parsing.parse_query(seg.text, fallback=task.description)
            invalid(seg, reason)
        candidates: list[Candidate] = yield Retrieve(query)
        if candidates:
            index = 0
            if s.enable_rerank and len(candidates) > 1:
                seg = yield from generate(Stage.RERANK, prompts.rerank_prompt(tokenizer, task.description, candidates))
                index, reason = parsing.parse_choice(seg.text, len(candidates))
                invalid(seg, reason)
            chosen = candidates[index]

    # 2. Utilization. An invalid action costs a step and a penalty; the environment is not stepped.
    step: StepResult = yield Reset(task)
    history: list[tuple[str, str]] = []
    actions: list[str] = []
    num_steps = num_invalid = 0
    while not step.done and num_steps < s.max_steps:
        prompt = prompts.act_prompt(tokenizer, task.description, step.observation, step.admissible_actions,
                                    history[-s.history_length:] if s.history_length else [],
                                    chosen.strategy if chosen else None, num_steps, env=task.env)
        constraint = ActionTargets.from_admissible(step.admissible_actions) if s.constrain_actions else None
        seg = yield from generate(Stage.ACT, prompt, constraint)
        action, reason = parsing.parse_action(seg.text, step.admissible_actions)
        invalid(seg, reason)
        num_steps += 1
        observation = step.observation
        if action is None:
            num_invalid += 1
            # what was tried, so that the next prompt differs and a policy can learn not to repeat it
            history.append((observation, f"{parsing.attempted_action(seg.text)} (invalid)"))
            continue
        actions.append(action)
        step = yield Step(action)
        history.append((observation, action))
    success = bool(step.won)
    outcome = float(step.reward)

    # 3. Distillation: reflect on the trajectory and write one skill.
    draft, rejection = None, None
    if s.enable_distillation:
        seg = yield from generate(Stage.DISTILL,
                                  prompts.distill_prompt(tokenizer, task.description, actions, success))
        draft, rejection = parsing.parse_skill(seg.text, s.max_skill_chars)
        invalid(seg, rejection)

    return Episode(
        episode_id=episode_id, group_id=group_id, task=task, segments=segments, candidates=candidates,
        chosen_skill_id=chosen.skill_id if chosen else None, outcome=outcome, success=success,
        num_steps=num_steps, num_invalid_actions=num_invalid, draft=draft, draft_rejection=rejection,
        query=query, parse_errors=dict(errors),
    )
