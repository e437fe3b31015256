"""The built-in household environment: ALFWorld-style text actions over a generated world, an expert
that plans with full knowledge of it, and the train/eval task source.

Pure Python and deterministic in (family, seed): a reset plus a whole episode takes well under a
millisecond, so tests and the CPU training loop can run thousands of episodes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from skill1.envs.base import StepResult
from skill1.envs.builtin.world import APPLIANCE, DESKLAMP, FAMILIES, VERB, Obj, World, generate_world
from skill1.types import Task

EVAL_SEED_BASE = 1_000_000  # train world seeds are [0, 1e6), eval seeds [1e6, 2e6): never shared
SPLITS = ("train", "eval")
NOTHING = "Nothing happens."


def _listing(names: list[str]) -> str:
    items = [f"a {n}" for n in names]
    if len(items) < 2:
        return items[0] if items else "nothing"
    return ", ".join(items[:-1]) + ", and " + items[-1]


def _describe(world: World, name: str) -> str:
    rec = world.receptacles[name]
    if rec.kind == DESKLAMP:
        return f"The {name} is {'on' if world.lamp_on else 'off'}."
    if not rec.openable:
        return f"On the {name}, you see {_listing(rec.contents)}."
    if not rec.is_open:
        return f"The {name} is closed."
    return f"The {name} is open. In it, you see {_listing(rec.contents)}."


def _room(world: World) -> str:
    return f"You are in the middle of a room. Looking quickly around you, you see {_listing(list(world.receptacles))}."


EXPLORE = "explore"


def _next_unsearched(world: World) -> str | None:
    return next((r for r in world.unsearched() if r != world.at), None)


def _admissible(world: World) -> list[str]:
    """Sorted, with `explore` first while some receptacle is unvisited: it walks to the next one not visited
    yet, in the room's listing order. The built-in env keeps track of where the agent has looked, so what it
    tests is knowing where to look (where object kinds tend to be), not remembering where it has been."""
    first = [EXPLORE] if _next_unsearched(world) else []
    acts = [f"go to {r}" for r in world.receptacles if r != world.at] + ["look", "inventory"]
    if world.at is not None:
        rec = world.receptacles[world.at]
        acts.append(f"examine {rec.name}")
        if rec.openable:
            acts.append(f"{'close' if rec.is_open else 'open'} {rec.name}")
        if rec.kind == DESKLAMP:
            acts.append(f"use {rec.name}")
        elif world.holding is None and rec.visible:
            acts += [f"take {o} from {rec.name}" for o in rec.contents]
        elif world.holding is not None:
            if rec.visible:
                acts.append(f"move {world.holding} to {rec.name}")
            if rec.kind in VERB:
                acts.append(f"{VERB[rec.kind]} {world.holding} with {rec.name}")
    return first + sorted(acts)


# What a placed goal object must also be, per transforming family.
_NEEDS: dict[str, Callable[[Obj], bool]] = {
    "pick_clean_then_place": lambda o: o.clean,
    "pick_heat_then_place": lambda o: o.temperature == "hot",
    "pick_cool_then_place": lambda o: o.temperature == "cold",
}


def _won(world: World) -> bool:
    held = world.objects[world.holding] if world.holding else None
    if world.target_kind is None:  # look_at_obj_in_light: lamp on, object in hand, at the lamp
        at_lamp = world.at is not None and world.receptacles[world.at].kind == DESKLAMP
        return world.lamp_on and at_lamp and held is not None and held.kind == world.goal_kind
    need = _NEEDS.get(world.family, lambda o: True)
    enough = 2 if world.family == "pick_two_obj_and_place" else 1
    for name in world.of_kind(world.target_kind):
        done = [o for o in world.receptacles[name].contents
                if world.objects[o].kind == world.goal_kind and need(world.objects[o])]
        if len(done) >= enough:
            return True
    return False


def _apply(world: World, action: str) -> str:
    """Carry out an admissible action; returns the observation."""
    if action == EXPLORE:
        action = f"go to {_next_unsearched(world)}"
    if action == "look":
        if world.at is None:
            return _room(world)
        return f"You are facing the {world.at}. Next to it, you see nothing."
    if action == "inventory":
        return f"You are carrying: a {world.holding}." if world.holding else "You are not carrying anything."
    verb, _, rest = action.partition(" ")
    if verb == "go":
        world.at = rest.removeprefix("to ")
        world.searched.add(world.at)  # visited: explore moves on (a closed one is the agent's to open)
        return f"You arrive at {world.at}. {_describe(world, world.at)}"
    if verb == "examine":
        return _describe(world, rest)
    if verb in ("open", "close"):
        world.receptacles[rest].is_open = verb == "open"
        return f"You open the {rest}. {_describe(world, rest)}" if verb == "open" else f"You close the {rest}."
    if verb == "use":
        world.lamp_on = not world.lamp_on
        return f"You turn {'on' if world.lamp_on else 'off'} the {rest}."
    if verb == "take":
        obj, _, src = rest.partition(" from ")
        world.receptacles[src].contents.remove(obj)
        world.objects[obj].location, world.holding = None, obj
        return f"You pick up the {obj} from the {src}."
    if verb == "move":
        obj, _, dst = rest.partition(" to ")
        world.receptacles[dst].contents.append(obj)
        world.objects[obj].location, world.holding = dst, None
        return f"You move the {obj} to the {dst}."
    obj, _, tool = rest.partition(" with ")  # clean / heat / cool
    if verb == "clean":
        world.objects[obj].clean = True
    else:
        world.objects[obj].temperature = "hot" if verb == "heat" else "cold"
    return f"You {verb} the {obj} using the {tool}."


class HouseholdEnv:
    """One episode of the household world (implements `TextEnv`)."""

    def __init__(self, max_steps: int = 30):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.world: World | None = None
        self.task: Task | None = None
        self.steps = 0
        self.done = False
        self._admissible: list[str] = []

    def reset(self, task: Task) -> StepResult:
        self.task, self.world = task, generate_world(int(task.payload["seed"]), task.family)
        self.steps, self.done = 0, False
        self._admissible = _admissible(self.world)
        obs = f"{_room(self.world)}\n\nYour task is to: {self.world.description}."
        return self._result(obs, won=False)

    def step(self, action: str) -> StepResult:
        if self.world is None:
            raise RuntimeError("step() before reset()")
        if self.done:
            raise RuntimeError("step() after the episode is done; call reset()")
        self.steps += 1
        obs = _apply(self.world, action) if action in self._admissible else NOTHING
        self._admissible = _admissible(self.world)
        won = _won(self.world)
        self.done = won or self.steps >= self.max_steps
        return self._result(obs, won)

    def _result(self, obs: str, won: bool) -> StepResult:
        return StepResult(obs, list(self._admissible), reward=1.0 if won else 0.0, done=self.done, won=won,
                          info={"family": self.world.family, "steps": self.steps, "task_id": self.task.task_id})


class _Planner:
    """Builds an action list while tracking where the agent is and what it has opened."""

    def __init__(self, world: World):
        self.world = world
        self.at: str | None = None
        self.opened: set[str] = set()
        self.actions: list[str] = []

    def go(self, rec: str) -> None:
        if self.at != rec:
            self.actions.append(f"go to {rec}")
            self.at = rec
        if self.world.receptacles[rec].openable and rec not in self.opened:
            self.actions.append(f"open {rec}")
            self.opened.add(rec)

    def fetch(self, obj: str) -> None:
        src = self.world.objects[obj].location
        self.go(src)
        self.actions.append(f"take {obj} from {src}")

    def put(self, obj: str, dst: str) -> None:
        self.go(dst)
        self.actions.append(f"move {obj} to {dst}")


def _plan(world: World, objs: tuple[str, ...], dst: str | None) -> list[str]:
    p = _Planner(world)
    if dst is None:  # look_at_obj_in_light
        p.fetch(objs[0])
        p.actions += [f"go to {world.of_kind(DESKLAMP)[0]}", f"use {world.of_kind(DESKLAMP)[0]}"]
        return p.actions
    for obj in objs:
        p.fetch(obj)
        if world.family in APPLIANCE:
            tool = world.of_kind(APPLIANCE[world.family])[0]
            if p.at != tool:  # the tool needs no opening: clean/heat/cool work on a closed appliance
                p.actions.append(f"go to {tool}")
                p.at = tool
            p.actions.append(f"{VERB[APPLIANCE[world.family]]} {obj} with {tool}")
        p.put(obj, dst)
    return p.actions


def expert_actions(task: Task) -> list[str]:
    """A shortest winning action sequence, planned with full knowledge of the hidden world.

    Every plan visits each needed place once per trip and opens each closed receptacle once, so the
    only choice is which goal object(s), in which order, and which target instance: try them all.
    """
    world = generate_world(int(task.payload["seed"]), task.family)
    goals = [n for n, o in world.objects.items() if o.kind == world.goal_kind]
    k = 2 if world.family == "pick_two_obj_and_place" else 1
    targets: list[str | None] = world.of_kind(world.target_kind) if world.target_kind else [None]
    plans = [_plan(world, objs, dst) for objs in itertools.permutations(goals, k) for dst in targets]
    return min(plans, key=len)  # min keeps the first of equal lengths: deterministic


class HouseholdTaskSource:
    """Tasks for the household env (implements `TaskSource`); train and eval worlds never overlap."""

    def __init__(self, seed_offset: int = 0):
        self.seed_offset = seed_offset

    def families(self) -> list[str]:
        return list(FAMILIES)

    def sample(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (valid splits: {', '.join(SPLITS)})")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{split}/{seed + self.seed_offset}")
        base = EVAL_SEED_BASE if split == "eval" else 0
        world_seeds = rng.sample(range(EVAL_SEED_BASE), n)  # distinct: task ids never repeat in a sample
        first = rng.randrange(len(FAMILIES))  # round-robin from a seeded start keeps families balanced
        tasks = []
        for i, s in enumerate(world_seeds):
            family = FAMILIES[(first + i) % len(FAMILIES)]
            tasks.append(Task(task_id=f"builtin/{family}/{base + s}", env="builtin", family=family,
                              description=generate_world(base + s, family).description,
                              payload={"seed": base + s}))
        return tasks
