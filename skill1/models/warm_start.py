"""Warm start: supervised fine-tuning of a fresh policy on expert demonstrations of the built-in env.

A randomly initialised model writes no parseable output: every action is invalid, every reward 0,
the library stays empty, and RL has nothing to work with. The demonstrations come from running the
real episode state machine with an oracle answering each request (the env's expert plan for actions,
a family skill for distillation), so their prompts are byte-identical to those the policy sees in RL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm import tqdm

from skill1.agent.episode import EpisodeSettings, Generate, Generated, Reset, Retrieve, Step, run_episode
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource, expert_actions
from skill1.learner.batching import collate
from skill1.learner.forward import response_logprobs
from skill1.types import Candidate, SkillDraft, Stage, Task, TrainSample

# Demonstration skills, one per family: what a good distillation of an expert episode looks like.
FAMILY_SKILLS = {
    "pick_and_place": SkillDraft(
        "put an object in or on a receptacle",
        "find the object, take it, go to the target receptacle, open it if closed, move the object to it"),
    "pick_two_obj_and_place": SkillDraft(
        "put two objects of one kind in or on a receptacle",
        "find the first object, take it, move it to the target; then find the second one and do the same"),
    "look_at_obj_in_light": SkillDraft(
        "look at or examine an object under the desklamp",
        "find the object, take it, go to desklamp 1 and use desklamp 1 while holding it"),
    "pick_clean_then_place": SkillDraft(
        "put a clean object in or on a receptacle",
        "find the object, take it, go to sinkbasin 1, clean it with sinkbasin 1, then move it to the target"),
    "pick_heat_then_place": SkillDraft(
        "put a hot or heated object in or on a receptacle",
        "find the object, take it, go to microwave 1, heat it with microwave 1, then move it to the target"),
    "pick_cool_then_place": SkillDraft(
        "put a cool or cold object in or on a receptacle",
        "find the object, take it, go to fridge 1, cool it with fridge 1, then move it to the target"),
}


@dataclass
class Demo:
    stage: Stage
    prompt_ids: list[int]
    response_ids: list[int]


def _candidates(family: str, rng: random.Random, k: int = 3) -> tuple[list[Candidate], int]:
    others = rng.sample([f for f in FAMILY_SKILLS if f != family], k - 1)
    fams = [family, *others]
    rng.shuffle(fams)
    cands = [Candidate(f"demo-{f}", FAMILY_SKILLS[f].scenario, FAMILY_SKILLS[f].strategy, 0.5, 0, 0.5, 0.5)
             for f in fams]
    return cands, fams.index(family)


def expert_demos(tasks: list[Task], tokenizer, settings: EpisodeSettings, seed: int = 0) -> list[Demo]:
    rng, env, eos = random.Random(seed), HouseholdEnv(max_steps=settings.max_steps), tokenizer.eos_token
    demos: list[Demo] = []
    for task in tasks:
        plan = iter(expert_actions(task))
        skill = FAMILY_SKILLS[task.family]
        cands, right = _candidates(task.family, rng)
        oracle = {
            Stage.QUERY: lambda: f"<query>{task.description}</query>",
            Stage.RERANK: lambda: f"<choice>{right + 1}</choice>",
            Stage.ACT: lambda: f"<think>ok</think><action>{next(plan)}</action>",
            Stage.DISTILL: lambda: f"<scenario>{skill.scenario}</scenario><strategy>{skill.strategy}</strategy>",
        }
        episode = run_episode(task, "demo", "demo", tokenizer, settings)
        request = episode.send(None)
        while True:
            if isinstance(request, Generate):
                text = oracle[request.stage]()
                ids = tokenizer.encode(text + eos, add_special_tokens=False)
                demos.append(Demo(request.stage, request.prompt_ids, ids))
                result = Generated(ids, [0.0] * len(ids), text)
            elif isinstance(request, Retrieve):
                result = cands
            elif isinstance(request, Reset):
                result = env.reset(request.task)
            elif isinstance(request, Step):
                result = env.step(request.action)
            try:
                request = episode.send(result)
            except StopIteration:
                break
    return demos


def warm_start(model: torch.nn.Module, tokenizer, settings: EpisodeSettings, steps: int, *, num_tasks: int = 240,
               batch_size: int = 16, lr: float = 3e-3, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """`steps` AdamW steps of token-mean NLL on the generated part of the demonstrations."""
    tasks = HouseholdTaskSource().sample("train", num_tasks, seed=10_000 + seed)
    demos = expert_demos(tasks, tokenizer, settings, seed)
    by_stage: dict[Stage, list[TrainSample]] = {}
    for d in demos:
        by_stage.setdefault(d.stage, []).append(
            TrainSample(d.prompt_ids + d.response_ids, len(d.prompt_ids), [0.0] * len(d.response_ids), 1.0, d.stage))
    stages = sorted(by_stage, key=lambda s: s.value)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm start (expert SFT)", disable=not progress,
                  mininterval=5.0):
        # stage-balanced: acting demos outnumber the others ~6:1, but all four generations must parse
        batch = [rng.choice(by_stage[rng.choice(stages)]) for _ in range(batch_size)]
        mb = collate(batch, tokenizer.pad_token_id)
        loss = -response_logprobs(model, mb).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    tail = losses[-20:] or [float("nan")]
    return {"demos": float(len(demos)), "first_loss": losses[0] if losses else float("nan"),
            "final_loss": sum(tail) / len(tail)}
