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

import copy
import dataclasses
import math
import random
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm

from skill1.agent.episode import Generate, run_episode
from skill1.agent.parsing import first_action, parse_action
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.envs.builtin.searcher import search_actions
from skill1.envs.builtin.world import APPLIANCE, DESKLAMP, PRIORS, SPECS, VERB, generate_world
from skill1.learner.batching import collate
from skill1.learner.forward import response_logprobs
from skill1.rollout.local import answer
from skill1.rollout.protocol import SamplingParams
from skill1.types import Candidate, EpisodeSettings, Generated, SkillDraft, Stage, Task, TrainSample

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
# v2: the acting demonstrations think what they are after (`focus`); mistakes shaped like the policy's own
# v3: an injected mistake does not use up the plan's steps; acting demos drawn balanced over decisions; the
# searcher names every destination (`explore` only searches)
RECIPE_VERSION = "v3"
BUCKET = 4  # batches drawn at once and regrouped by length
STAGE_WEIGHTS = {Stage.QUERY: 0.12, Stage.RERANK: 0.1, Stage.ACT: 0.58, Stage.DISTILL: 0.2}
# The acting decisions, drawn in proportion to the square root of their counts. Searcher demos are ~35%
# `explore` and ~23% `open` (easy: the next stop, a closed door) against ~11% `take` and ~3% `move`, the steps
# that read the task and the observation: drawn as they come, a tiny policy learns to explore past the object
# it was sent for; drawn evenly, it imitated `explore` less well (0.71 against 0.86) and succeeded no more.
DECISIONS = ("explore", "open", "go", "take", "move", "use")  # "use" stands for every appliance verb
# A demo episode may generate this many times max_steps acting outputs: its invalid ones (injected mistakes,
# the policy's own in DAgger) use up the episode's steps but never the env's, which ends the episode after
# max_steps valid ones, so a mistake does not cut the plan short.
EPISODE_ROOM = 3


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
    # drawn by the priors: drawn evenly (tried, v5 in the README), a 1600-step policy followed skills less
    # (0.15 -> 0.16 success given the right skill, against 0.17 -> 0.31 drawn by the priors)
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


def _mistake(env: HouseholdEnv, rng: random.Random, intended: str, advice: str | None) -> str:
    """A plausible inadmissible action in the env's current state, shaped like a tiny policy's own errors: the
    intended action with a wrong number ("take bread 1" for "take bread 2"), a visit to a receptacle kind the
    room lacks (the advised one, or one where the object tends to be), or an action on what is not here.
    Recovery from errors the policy really makes is what stops greedy decoding repeating them."""
    world, admissible = env.world, set(env._admissible)
    here = world.at or "cabinet 1"
    present = {r.kind for r in world.receptacles.values()}
    absent = sorted({advice, *PRIORS.get(world.goal_kind, {})} - present - {None})
    names = [f"{k} {i}" for k in sorted(present) for i in (1, 2, 3)]
    renumbered = [re.sub(r"\d+", str(n), intended, count=1) for n in (1, 2, 3)]
    renumbered += [re.sub(r"(\d+)$", str(n), intended) for n in (1, 2, 3)]
    options = [
        *(a for a in renumbered if a != intended),
        *(f"go to {k} 1" for k in absent),
        f"go to {here}", f"take {world.goal_kind} 1 from {here}", f"open {rng.choice(names)}",
        f"go to {rng.choice(names)}", f"move {world.goal_kind} 1 to {rng.choice(names)}",
    ]
    wrong = [o for o in options if o not in admissible]
    return rng.choice(wrong) if wrong else "go to the moon"


def focus(world, taken: list[str]) -> str:
    """What the agent is after now, from what it knows (what it holds, what it has done): the object until it
    holds one, then the appliance the family needs, then the target (the desklamp to look under). The
    demonstrations think it before acting: the tiny policy writes the word it must find in the prompt right
    before the action, so choosing `take <it> ...` over `explore` is a one-step lookup instead of two."""
    held = world.holding
    if held is None:
        return world.goal_kind
    if world.family == "look_at_obj_in_light":
        return DESKLAMP
    appliance = APPLIANCE.get(world.family)
    if appliance and not any(a.startswith(f"{VERB[appliance]} {held} ") for a in taken):
        return appliance
    return world.target_kind


def demonstrations(tasks: list[Task], tokenizer, settings: EpisodeSettings, seed: int = 0,
                   with_library: float = 0.6, explore: float = 0.25, mistakes: float = 0.3,
                   policy=None, batch_size: int = 64) -> list[Demo]:
    """Run each task's episode with the searcher as oracle and record every generation as a demo.

    `with_library`: share of episodes that retrieve skills (the rest see an empty library, as iteration 1
    and a no-library run do); `explore`: share of unadvised episodes whose first visit is a random receptacle
    kind, so the policy keeps some spread over where to look first (RL needs it to explore); `mistakes`: chance
    per acting step of an injected inadmissible action, not learned from, so that the demonstrations show
    how to carry on after one (a greedy policy that cannot repeats its mistake until the episode ends).

    `policy` (a sampler): its greedy action is asked for at every acting step, and when it is inadmissible it is
    played, and the searcher's action is what that prompt teaches. That is DAgger on the policy's own errors: an
    invalid action changes nothing, so the searcher's action stays the right one, for the prompt the policy got
    wrong and for the next one, which shows the error. The episodes run in lockstep so that the policy's
    actions are generated `batch_size` at a time."""
    demos: list[Demo] = []
    plays = {i: _play(task, random.Random(f"demo/{seed}/{i}"), tokenizer, settings, demos, with_library,
                      explore, mistakes, policy is not None) for i, task in enumerate(tasks)}
    waiting: dict[int, list[int]] = {}  # episode -> the acting prompt it wants the policy's action for
    for i, play in plays.items():
        try:
            waiting[i] = next(play)
        except StopIteration:
            pass
    while waiting:
        idx = list(waiting)[:batch_size]
        outs = policy.generate([waiting[i] for i in idx],
                               SamplingParams(0.0, 1.0, settings.max_new_tokens[Stage.ACT]))
        for i, out in zip(idx, outs):
            try:
                waiting[i] = plays[i].send(out.text)
            except StopIteration:
                del waiting[i]
    return demos


def _play(task: Task, rng: random.Random, tokenizer, settings: EpisodeSettings, demos: list[Demo],
          with_library: float, explore: float, mistakes: float, ask_policy: bool):
    """One demonstration episode; yields an acting prompt when it wants the policy's action for it."""
    env, eos = HouseholdEnv(max_steps=settings.max_steps), tokenizer.eos_token
    # cut short by ~30% mistakes, demos would seldom reach the `take` and `move` steps at a plan's end
    budget = dataclasses.replace(settings, max_steps=settings.max_steps * EPISODE_ROOM)
    world = generate_world(int(task.payload["seed"]), task.family)
    cands, right = demo_candidates(task, rng) if rng.random() < with_library else ([], 0)
    first = advised_kind(cands[right].strategy) if cands else None
    if first is None and rng.random() < explore:
        first = rng.choice(sorted({r.kind for r in world.receptacles.values()}))
    plan = search_actions(task, first, limit=settings.max_steps).actions
    taken: list[str] = []

    def act(proposed: str | None) -> tuple[str, str | None]:
        """(what is played, what is learned here: None for an injected mistake)."""
        # the searcher's plan fits max_steps; "look" only guards a short one
        action = plan[len(taken)] if len(taken) < len(plan) else "look"
        target = f"<think>{focus(env.world, taken)}</think><action>{action}</action>"
        if proposed is not None and parse_action(proposed, env._admissible)[0] is None:
            return proposed, target  # the policy's error is played; here the searcher's action is the answer
        if rng.random() < mistakes:
            return f"<think>ok</think><action>{_mistake(env, rng, action, first)}</action>", None
        taken.append(action)
        return target, target

    def distill() -> str:
        skill = write_skill(task.family, world.goal_kind, found_kind_of(taken, world.goal_kind))
        return f"<scenario>{skill.scenario}</scenario><strategy>{skill.strategy}</strategy>"

    oracle = {
        Stage.QUERY: lambda: f"<query>{gist(task.family, world.goal_kind)}</query>",
        Stage.RERANK: lambda: f"<choice>{right + 1}</choice>",
        Stage.DISTILL: distill,
    }
    episode = run_episode(task, "demo", "demo", tokenizer, budget)
    request = episode.send(None)
    while True:
        if isinstance(request, Generate):
            if request.stage is Stage.ACT:
                proposed = (yield request.prompt_ids) if ask_policy else None
                text, learn = act(proposed)
            else:
                text = learn = oracle[request.stage]()
            ids = tokenizer.encode(text + eos, add_special_tokens=False)
            if learn is not None:
                demos.append(Demo(request.stage, request.prompt_ids,
                                  ids if learn == text else tokenizer.encode(learn + eos, add_special_tokens=False)))
            result = Generated(ids, [0.0] * len(ids), text)
        else:
            result = answer(request, env, lambda query: cands)
        try:
            request = episode.send(result)
        except StopIteration:
            return


def demo_tasks(num_tasks: int, seed: int = 0) -> list[Task]:
    return HouseholdTaskSource().sample("train", num_tasks, seed=10_000 + seed)


def warm_start(model: torch.nn.Module, tokenizer, settings: EpisodeSettings, steps: int, *, num_tasks: int = 600,
               batch_size: int = 32, lr: float = 2e-3, seed: int = 0, progress: bool = True,
               dagger_steps: int = 0, dagger_tasks: int = 400) -> dict[str, float]:
    """`steps` AdamW steps of token-mean NLL on the generated part of the searcher's demonstrations; then, if
    `dagger_steps`, one DAgger round: the policy plays `dagger_tasks` new tasks beside the searcher, its invalid
    actions become the mistakes the demonstrations recover from, and `dagger_steps` more steps train on both."""
    demos = demonstrations(demo_tasks(num_tasks, seed), tokenizer, settings, seed)
    report = {"recipe": RECIPE_VERSION, "demos": float(len(demos))}
    report.update(_sft(model, tokenizer, demos, steps, lr, batch_size, seed, progress, "warm start (searcher SFT)"))
    if dagger_steps > 0:
        from skill1.rollout.sampler import HFSampler

        policy = HFSampler.from_model(copy.deepcopy(model), tokenizer)
        own = demonstrations(demo_tasks(dagger_tasks, seed + 1), tokenizer, settings, seed + 1, policy=policy)
        recovered = sum(d.stage is Stage.ACT and "(invalid)" in tokenizer.decode(d.prompt_ids) for d in own)
        after = _sft(model, tokenizer, demos + own, dagger_steps, lr / 3, batch_size, seed + 1, progress,
                     "warm start (DAgger on its own mistakes)")
        report.update({"dagger_demos": float(len(own)), "dagger_recoveries": float(recovered),
                       "final_loss": after["final_loss"]})
    return report


def decision(response: str) -> str:
    """The acting decision a demo response teaches (one of DECISIONS)."""
    verb = (first_action(response) or "use").split(" ", 1)[0]
    return verb if verb in DECISIONS else "use"


def _sft(model: torch.nn.Module, tokenizer, demos: list[Demo], steps: int, lr: float, batch_size: int, seed: int,
         progress: bool, desc: str) -> dict[str, float]:
    # draw pools: the non-acting stages, and one per acting decision (the stage's weight split by sqrt count)
    by_pool: dict[object, list[TrainSample]] = {}
    for d in demos:
        key = decision(tokenizer.decode(d.response_ids)) if d.stage is Stage.ACT else d.stage
        by_pool.setdefault(key, []).append(
            TrainSample(d.prompt_ids + d.response_ids, len(d.prompt_ids), [0.0] * len(d.response_ids), 1.0, d.stage))
    acting = [k for k in DECISIONS if k in by_pool]
    pools = [s for s in STAGE_WEIGHTS if s is not Stage.ACT and s in by_pool] + acting
    root = {k: math.sqrt(len(by_pool[k])) for k in acting}
    weights = [STAGE_WEIGHTS[Stage.ACT] * root[k] / sum(root.values()) if k in acting else STAGE_WEIGHTS[k]
               for k in pools]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    model.train()
    losses: list[float] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress, mininterval=5.0)
    while len(losses) < steps:
        # stage-weighted (acting demos outnumber the others ~7:1, but all four generations must parse), drawn
        # BUCKET batches at a time and cut into batches of similar length: every sample is still trained on,
        # and a batch pads to its own longest, not to the longest acting prompt (~1.5x the tokens per second)
        pool = [rng.choice(by_pool[k]) for k in rng.choices(pools, weights=weights, k=BUCKET * batch_size)]
        pool.sort(key=lambda t: len(t.input_ids))
        batches = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(batches)
        for batch in batches[:steps - len(losses)]:
            loss = -response_logprobs(model, collate(batch, tokenizer.pad_token_id)).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update()
    bar.close()
    model.eval()
    tail = losses[-20:] or [float("nan")]
    return {"first_loss": losses[0] if losses else float("nan"), "final_loss": sum(tail) / len(tail)}
