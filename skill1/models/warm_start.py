"""Warm start: supervised fine-tuning of a fresh policy on demonstrations of the built-in env.

A randomly initialised model writes no parseable output: every action is invalid, every reward 0,
the library stays empty, and RL has nothing to work with. The demonstrations come from running the
real episode state machine with an oracle answering each request, so their prompts are byte-identical to
those the policy sees in RL. The oracle is the *searcher* (`envs.builtin.searcher`): it knows the formats
and the procedures but not where objects are, so the warm-started policy can act, select, follow and write
skills, and leaves the knowledge of where things live to reinforcement learning and the library.

What the demonstrations teach, stage by stage:
  query    the task's gist ("put a hot egg"), the text skills are filed under
  rerank   the candidate written for the same object
  act      search in listed order, or the receptacle kind the chosen skill names first
  distill  a skill from the trajectory: where the object was found, and the family's procedure
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm

from skill1.agent.episode import EpisodeSettings, Generate, Generated, Reset, Retrieve, Step, run_episode
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.envs.builtin.searcher import search_actions
from skill1.envs.builtin.world import APPLIANCE, PRIORS, SPECS, VERB, generate_world
from skill1.learner.batching import collate
from skill1.learner.forward import response_logprobs
from skill1.types import Candidate, SkillDraft, Stage, Task, TrainSample

# The gist of a task: what a query asks for and what a skill's scenario is filed under.
GIST = {
    "pick_and_place": "put a {o}",
    "pick_two_obj_and_place": "put two {o}",
    "look_at_obj_in_light": "look at a {o} in light",
    "pick_clean_then_place": "put a clean {o}",
    "pick_heat_then_place": "put a hot {o}",
    "pick_cool_then_place": "put a cool {o}",
}
PROCEDURE = {
    "pick_and_place": "take it, go to the target, open it if closed, move the {o} there",
    "pick_two_obj_and_place": "take one, move it to the target, then fetch the second the same way",
    "look_at_obj_in_light": "take it, go to the desklamp and use the desklamp",
    "pick_clean_then_place": "take it, clean it with the sinkbasin, then move it to the target",
    "pick_heat_then_place": "take it, heat it with the microwave, then move it to the target",
    "pick_cool_then_place": "take it, cool it with the fridge, then move it to the target",
}
ADVICE = re.compile(r"look for the \w+ in the (\w+) first")
STAGE_WEIGHTS = {Stage.QUERY: 0.12, Stage.RERANK: 0.1, Stage.ACT: 0.58, Stage.DISTILL: 0.2}


def gist(family: str, obj: str) -> str:
    return GIST[family].format(o=obj)


def task_gist(task: Task) -> str:
    return gist(task.family, generate_world(int(task.payload["seed"]), task.family).goal_kind)


def write_skill(family: str, obj: str, found_kind: str | None) -> SkillDraft:
    """The skill a trajectory teaches: where the object turned up (if it did), then the family's procedure."""
    where = f"look for the {obj} in the {found_kind} first, " if found_kind else f"search each place for the {obj}, "
    return SkillDraft(gist(family, obj), where + PROCEDURE[family].format(o=obj))


def advised_kind(strategy: str | None) -> str | None:
    """The receptacle kind a skill says to search first, if it says one."""
    m = ADVICE.search(strategy or "")
    return m.group(1) if m else None


def found_kind_of(actions: list[str], obj: str) -> str | None:
    """Where the trajectory picked up its first goal object (`take <obj> N from <kind> M`)."""
    for a in actions:
        m = re.fullmatch(rf"take {obj} \d+ from (\w+) \d+", a)
        if m:
            return m.group(1)
    return None


@dataclass
class Demo:
    stage: Stage
    prompt_ids: list[int]
    response_ids: list[int]


def demo_candidates(task: Task, rng: random.Random, k: int = 3) -> tuple[list[Candidate], int]:
    """k skills as a library would offer them: one written for the task's object (advice drawn from where
    that object kind tends to be), the others for other objects; returns them and the right one's index."""
    world = generate_world(int(task.payload["seed"]), task.family)
    obj = world.goal_kind
    kinds = list(PRIORS[obj])
    own = write_skill(task.family, obj, rng.choices(kinds, weights=[PRIORS[obj][q] for q in kinds])[0])
    drafts = [own]
    for _ in range(k - 1):
        fam = rng.choice(list(SPECS))
        other = rng.choice([o for o in SPECS[fam].objects if o != obj])
        drafts.append(write_skill(fam, other, rng.choice(list(PRIORS[other]))))
    order = list(range(k))
    rng.shuffle(order)
    cands = [Candidate(f"demo-{i}", drafts[i].scenario, drafts[i].strategy, 0.5, 0, 0.5, 0.5) for i in order]
    return cands, order.index(0)


def _mistake(env: HouseholdEnv, rng: random.Random) -> str:
    """A plausible inadmissible action in the env's current state: what a tiny policy gets wrong."""
    world, admissible = env.world, set(env._admissible)
    here = world.at or "cabinet 1"
    names = [f"{k} {i}" for k in sorted({r.kind for r in world.receptacles.values()}) for i in (1, 2, 3)]
    options = [f"go to {here}", f"take {world.goal_kind} 1 from {here}", f"open {rng.choice(names)}",
               f"go to {rng.choice(names)}", f"move {world.goal_kind} 1 to {rng.choice(names)}"]
    wrong = [o for o in options if o not in admissible]
    return rng.choice(wrong) if wrong else "go to the moon"


def demonstrations(tasks: list[Task], tokenizer, settings: EpisodeSettings, seed: int = 0,
                   with_library: float = 0.6, explore: float = 0.25, mistakes: float = 0.3) -> list[Demo]:
    """Run each task's episode with the searcher as oracle and record every generation as a demo.

    `with_library`: share of episodes that retrieve skills (the rest see an empty library, as iteration 1
    and a no-library run do); `explore`: share of unadvised episodes whose first visit is a random receptacle
    kind, so the policy keeps some spread over where to look first (RL needs it to explore); `mistakes`: chance
    per acting step of an injected inadmissible action, not learned from, so that the demonstrations show
    how to carry on after one (a greedy policy that cannot repeats its mistake until the episode ends)."""
    rng, env, eos = random.Random(seed), HouseholdEnv(max_steps=settings.max_steps), tokenizer.eos_token
    demos: list[Demo] = []
    for task in tasks:
        world = generate_world(int(task.payload["seed"]), task.family)
        cands, right = demo_candidates(task, rng) if rng.random() < with_library else ([], 0)
        first = advised_kind(cands[right].strategy) if cands else None
        if first is None and rng.random() < explore:
            first = rng.choice(sorted({r.kind for r in world.receptacles.values()}))
        plan = iter(search_actions(task, first, limit=settings.max_steps).actions)
        taken: list[str] = []
        wrong: list[bool] = []  # per generation: an injected mistake (answered, not recorded)

        def act() -> str:
            if taken and rng.random() < mistakes:
                wrong.append(True)
                return f"<think>ok</think><action>{_mistake(env, rng)}</action>"
            action = next(plan, "look")  # the searcher's plan fits max_steps; this only guards a short one
            taken.append(action)
            wrong.append(False)
            return f"<think>ok</think><action>{action}</action>"

        def distill() -> str:
            skill = write_skill(task.family, world.goal_kind, found_kind_of(taken, world.goal_kind))
            return f"<scenario>{skill.scenario}</scenario><strategy>{skill.strategy}</strategy>"

        oracle = {
            Stage.QUERY: lambda: f"<query>{gist(task.family, world.goal_kind)}</query>",
            Stage.RERANK: lambda: f"<choice>{right + 1}</choice>",
            Stage.ACT: act,
            Stage.DISTILL: distill,
        }
        episode = run_episode(task, "demo", "demo", tokenizer, settings)
        request = episode.send(None)
        while True:
            if isinstance(request, Generate):
                text = oracle[request.stage]()
                ids = tokenizer.encode(text + eos, add_special_tokens=False)
                if not (request.stage is Stage.ACT and wrong[-1]):
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


def demo_tasks(num_tasks: int, seed: int = 0) -> list[Task]:
    return HouseholdTaskSource().sample("train", num_tasks, seed=10_000 + seed)


def warm_start(model: torch.nn.Module, tokenizer, settings: EpisodeSettings, steps: int, *, num_tasks: int = 600,
               batch_size: int = 32, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """`steps` AdamW steps of token-mean NLL on the generated part of the demonstrations."""
    demos = demonstrations(demo_tasks(num_tasks, seed), tokenizer, settings, seed)
    by_stage: dict[Stage, list[TrainSample]] = {}
    for d in demos:
        by_stage.setdefault(d.stage, []).append(
            TrainSample(d.prompt_ids + d.response_ids, len(d.prompt_ids), [0.0] * len(d.response_ids), 1.0, d.stage))
    stages = [s for s in STAGE_WEIGHTS if s in by_stage]
    weights = [STAGE_WEIGHTS[s] for s in stages]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm start (searcher SFT)", disable=not progress, mininterval=5.0):
        # stage-weighted: acting demos outnumber the others ~7:1, but all four generations must parse
        batch = [rng.choice(by_stage[s]) for s in rng.choices(stages, weights=weights, k=batch_size)]
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
