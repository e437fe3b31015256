"""The built-in household environment: determinism, rules, the expert, the task source."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest

from skill1.envs.builtin import FAMILIES, HouseholdEnv, HouseholdTaskSource, expert_actions
from skill1.envs.builtin.world import World, generate_world
from skill1.envs.registry import make_env, make_task_source
from skill1.types import Task

CONFIG_MAX_STEPS = 10  # env.max_steps default in skill1/config_sections.py: expert demos must fit in it
FAMILY_VERBS = {
    "pick_and_place": set(),
    "pick_two_obj_and_place": set(),
    "look_at_obj_in_light": {"use"},
    "pick_clean_then_place": {"clean"},
    "pick_heat_then_place": {"heat"},
    "pick_cool_then_place": {"cool"},
}


def task(family: str, seed: int) -> Task:
    return Task(f"builtin/{family}/{seed}", "builtin", family, generate_world(seed, family).description,
                {"seed": seed})


def play(env: HouseholdEnv, t: Task, actions: list[str]) -> list[str]:
    observations = [env.reset(t).observation]
    observations += [env.step(a).observation for a in actions]
    return observations


def random_walk(env: HouseholdEnv, t: Task, rng: random.Random, steps: int):
    """Yields every StepResult of a random admissible walk (reset included)."""
    result = env.reset(t)
    yield result
    for _ in range(steps):
        if result.done:
            return
        result = env.step(rng.choice(result.admissible_actions))
        yield result


def state_key(w: World) -> tuple:
    return (w.at, w.holding, w.lamp_on,
            tuple((r.is_open, tuple(sorted(r.contents))) for r in w.receptacles.values()),
            tuple((o.clean, o.temperature) for o in w.objects.values()))


def wins_within(t: Task, limit: int) -> bool:
    """Breadth-first search over admissible actions: can any sequence of <= limit steps win?"""
    env = HouseholdEnv(max_steps=limit + 1)
    result = env.reset(t)
    frontier, seen = [(env, result.admissible_actions)], {state_key(env.world)}
    for _ in range(limit):
        nxt = []
        for e, admissible in frontier:
            for a in admissible:
                if a.split()[0] in ("look", "inventory", "examine", "close"):  # never bring a goal closer
                    continue
                child = copy.deepcopy(e)
                r = child.step(a)
                if r.won:
                    return True
                k = state_key(child.world)
                if k not in seen:
                    seen.add(k)
                    nxt.append((child, r.admissible_actions))
        frontier = nxt
    return False


def test_families_are_alfworld_task_types():
    assert FAMILIES == ["pick_and_place", "pick_two_obj_and_place", "look_at_obj_in_light",
                        "pick_clean_then_place", "pick_heat_then_place", "pick_cool_then_place"]
    assert HouseholdTaskSource().families() == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_episode(family):
    t = task(family, 42)
    rng_a, rng_b = random.Random(7), random.Random(7)
    walk_a = [r.observation for r in random_walk(HouseholdEnv(), t, rng_a, 25)]
    walk_b = [r.observation for r in random_walk(HouseholdEnv(), t, rng_b, 25)]
    assert walk_a == walk_b
    env = HouseholdEnv()
    assert play(env, t, expert_actions(t)) == play(env, t, expert_actions(t))  # reset fully rebuilds


def test_different_seeds_give_different_worlds():
    starts = {HouseholdEnv().reset(task(f, s)).observation for f in FAMILIES for s in range(50)}
    assert len(starts) > 250


def test_initial_observation_names_room_and_task():
    t = task("pick_clean_then_place", 3)
    obs = HouseholdEnv().reset(t).observation
    assert obs.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
    assert obs.endswith(f"\n\nYour task is to: {t.description}.")
    assert t.description.split()[0] in ("put", "clean")
    for name in generate_world(3, "pick_clean_then_place").receptacles:
        assert f"a {name}" in obs


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_wins_with_admissible_actions(family):
    env = HouseholdEnv()
    assert env.max_steps >= CONFIG_MAX_STEPS
    for seed in range(60):
        t = task(family, seed)
        plan = expert_actions(t)
        assert 1 <= len(plan) <= CONFIG_MAX_STEPS, (t.task_id, plan)
        result = env.reset(t)
        for i, action in enumerate(plan):
            assert action in result.admissible_actions, (t.task_id, i, action)
            assert not result.done
            result = env.step(action)
            assert result.observation != "Nothing happens."
        assert result.won and result.done and result.reward == 1.0, (t.task_id, plan)
        assert result.info == {"family": family, "steps": len(plan), "task_id": t.task_id}


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_is_shortest(family):
    for seed in (11, 12):
        t = task(family, seed)
        assert not wins_within(t, len(expert_actions(t)) - 1), t.task_id


@pytest.mark.parametrize("family", FAMILIES)
def test_families_need_different_procedures(family):
    for seed in range(40):
        plan = expert_actions(task(family, seed))
        verbs = Counter(a.split()[0] for a in plan)
        assert {v for v in ("clean", "heat", "cool", "use") if verbs[v]} == FAMILY_VERBS[family]
        if family == "pick_two_obj_and_place":
            taken = {a.split(" from ")[0] for a in plan if a.startswith("take ")}
            assert verbs["take"] == verbs["move"] == 2 and len(taken) == 2
        elif family == "look_at_obj_in_light":
            assert verbs["take"] == 1 and verbs["move"] == 0 and plan[-1] == "use desklamp 1"
        else:
            assert verbs["take"] == verbs["move"] == 1
        for verb, tool in (("clean", "sinkbasin 1"), ("heat", "microwave 1"), ("cool", "fridge 1")):
            for a in plan:
                if a.startswith(verb + " "):
                    assert a.endswith(f" with {tool}")
                    assert plan[plan.index(a) - 1].endswith(tool)  # arrived at it, or took the object from it


@pytest.mark.parametrize("family", ["pick_clean_then_place", "pick_heat_then_place", "pick_cool_then_place"])
def test_untransformed_object_does_not_count(family):
    t = task(family, 5)
    plan = expert_actions(t)
    skipped = [a for i, a in enumerate(plan)
               if not a.startswith(("clean", "heat", "cool"))
               and not (a.startswith("go to") and plan[i + 1].startswith(("clean", "heat", "cool")))]
    env = HouseholdEnv()
    result = env.reset(t)
    for a in skipped:
        assert a in result.admissible_actions
        result = env.step(a)
    assert skipped[-1].startswith("move ") and result.observation.startswith("You move the ")
    assert not result.won and not result.done


def test_lamp_without_the_object_does_not_win():
    env = HouseholdEnv()
    result = env.reset(task("look_at_obj_in_light", 9))
    result = env.step("go to desklamp 1")
    assert "use desklamp 1" in result.admissible_actions
    result = env.step("use desklamp 1")
    assert result.observation == "You turn on the desklamp 1." and not result.won
    assert env.step("examine desklamp 1").observation == "The desklamp 1 is on."


@pytest.mark.parametrize("action", ["fly to the moon", "go to garage 1", "take mug 9 from cabinet 1", "close fridge 1",
                                    "heat apple 1 with microwave 1", "use desklamp 1", ""])
def test_inadmissible_action_changes_nothing(action):
    env = HouseholdEnv()
    t = task("pick_heat_then_place", 17)
    before = env.reset(t)
    assert action not in before.admissible_actions
    world = copy.deepcopy(env.world)
    result = env.step(action)
    assert result.observation == "Nothing happens."
    assert env.world == world
    assert result.admissible_actions == before.admissible_actions
    assert result.info["steps"] == 1 and not result.done and result.reward == 0.0


def test_max_steps_ends_with_zero_reward_and_then_step_raises():
    env = HouseholdEnv(max_steps=3)
    env.reset(task("pick_and_place", 1))
    assert not env.step("look").done
    assert not env.step("inventory").done
    result = env.step("look")
    assert result.done and not result.won and result.reward == 0.0 and result.info["steps"] == 3
    with pytest.raises(RuntimeError):
        env.step("look")
    assert not env.reset(task("pick_and_place", 1)).done  # reset starts over


def test_win_on_the_last_allowed_step_counts():
    t = task("pick_two_obj_and_place", 4)
    plan = expert_actions(t)
    env = HouseholdEnv(max_steps=len(plan))
    results = [env.reset(t)] + [env.step(a) for a in plan]
    assert results[-1].won and results[-1].reward == 1.0
    with pytest.raises(RuntimeError):
        env.step(results[-1].admissible_actions[0])
    with pytest.raises(RuntimeError):
        HouseholdEnv().step("look")


def test_admissible_lists_are_short_ordered_and_sensible():
    rng, env, lengths = random.Random(0), HouseholdEnv(), []
    for i in range(120):
        for result in random_walk(env, task(FAMILIES[i % 6], i), rng, 30):
            acts = result.admissible_actions
            w = env.world
            # `explore` first while a receptacle's contents were never visible; the rest sorted
            unsearched = [r for r, rec in w.receptacles.items()
                          if r != w.at and rec.kind != "desklamp" and r not in w.searched]
            assert (acts[0] == "explore") == bool(unsearched)
            rest = acts[1:] if unsearched else acts
            assert len(acts) == len(set(acts)) and rest == sorted(rest) and "explore" not in rest
            lengths.append(len(acts))
            assert f"go to {w.at}" not in acts and {"look", "inventory"} <= set(acts)
            if w.holding is not None:
                assert not any(a.startswith("take ") for a in acts)
            if any(a.startswith(("clean ", "heat ", "cool ", "move ")) for a in acts):
                assert w.holding is not None
    assert 6 <= sum(lengths) / len(lengths) <= 16 and max(lengths) <= 22


def test_explore_walks_to_the_receptacles_not_visited_yet_in_the_rooms_order():
    for seed in range(200):
        world = generate_world(seed, "pick_heat_then_place")
        closed = [r for r in world.receptacles.values() if r.openable]
        open_ = [r for r in world.receptacles.values() if not r.openable and r.kind != "desklamp"]
        if closed and open_:
            break
    env = HouseholdEnv(max_steps=50)
    names = [r for r, rec in world.receptacles.items() if rec.kind != "desklamp"]
    assert env.reset(task("pick_heat_then_place", seed)).admissible_actions[0] == "explore"
    assert env.step("explore").observation.startswith(f"You arrive at {names[0]}.")  # the room's first
    assert names[0] in env.world.searched  # visited, open or not: opening it is the agent's business
    env.step(f"go to {closed[0].name}")
    env.step(f"go to {open_[0].name}")
    assert {closed[0].name, open_[0].name} <= env.world.searched
    # explore skips what was searched and where the agent stands, in the room's order, until none is left
    seen = []
    while (result := env.step("explore")).admissible_actions[0] == "explore":
        seen.append(env.world.at)
    seen.append(env.world.at)
    expected = [r for r in names if r not in {names[0], closed[0].name, open_[0].name}]
    assert seen == expected and "explore" not in result.admissible_actions


def test_closed_receptacles_hide_their_contents():
    for seed in range(200):
        world = generate_world(seed, "pick_cool_then_place")
        full = [r for r in world.receptacles.values() if r.openable and r.contents]
        if full:
            break
    rec = full[0]
    env = HouseholdEnv()
    env.reset(task("pick_cool_then_place", seed))
    arrived = env.step(f"go to {rec.name}")
    assert arrived.observation == f"You arrive at {rec.name}. The {rec.name} is closed."
    assert not any(a.startswith("take ") for a in arrived.admissible_actions)
    opened = env.step(f"open {rec.name}")
    assert opened.observation.startswith(f"You open the {rec.name}. The {rec.name} is open. In it, you see a ")
    assert {f"take {o} from {rec.name}" for o in rec.contents} <= set(opened.admissible_actions)
    assert f"close {rec.name}" in opened.admissible_actions and f"open {rec.name}" not in opened.admissible_actions


def test_world_sizes_and_placement_priors():
    where: dict[str, Counter] = {k: Counter() for k in ("mug", "cup", "apple", "tomato", "book", "pen")}
    for seed in range(1500):
        for family in FAMILIES:
            w = generate_world(seed, family)
            assert 5 <= len(w.receptacles) <= 10 and 3 <= len(w.objects) <= 6
            assert not any(r.is_open for r in w.receptacles.values())  # openables start closed
            for o in w.objects.values():
                if o.kind in where:
                    where[o.kind][w.receptacles[o.location].kind] += 1

    def share(kind: str, places: tuple[str, ...]) -> float:
        return sum(where[kind][p] for p in places) / sum(where[kind].values())

    assert share("mug", ("cabinet",)) > 0.4 and share("mug", ("cabinet", "coffeemachine")) > 0.65
    assert share("cup", ("cabinet", "coffeemachine")) > 0.65
    assert share("apple", ("fridge", "countertop")) > 0.75 and share("tomato", ("fridge", "countertop")) > 0.75
    assert share("book", ("desk", "shelf")) > 0.8 and share("pen", ("desk",)) > 0.4
    assert share("pen", ("desk", "drawer")) > 0.75 and share("mug", ("desk", "shelf", "drawer")) == 0


def test_goal_never_starts_done():
    for seed in range(300):
        for family in FAMILIES:
            w = generate_world(seed, family)
            if w.target_kind is not None:
                for name in w.of_kind(w.target_kind):
                    assert all(w.objects[o].kind != w.goal_kind for o in w.receptacles[name].contents)


def test_random_agent_rarely_wins():
    rng, env, wins = random.Random(1), HouseholdEnv(max_steps=CONFIG_MAX_STEPS), 0
    for i in range(600):
        *_, last = random_walk(env, task(FAMILIES[i % 6], i), rng, CONFIG_MAX_STEPS)
        wins += last.won
    assert wins < 60


def test_task_source_splits():
    src = HouseholdTaskSource()
    train, evals = src.sample("train", 300, seed=0), src.sample("eval", 300, seed=0)
    assert src.sample("train", 300, seed=0) == train  # deterministic
    assert src.sample("train", 300, seed=1) != train
    assert all(t.payload["seed"] < 1_000_000 for t in train) and all(t.payload["seed"] >= 1_000_000 for t in evals)
    ids = [t.task_id for t in train + evals]
    assert len(set(ids)) == len(ids)
    assert Counter(t.family for t in train) == {f: 50 for f in FAMILIES}
    for t in train[:30]:
        assert t.env == "builtin" and t.task_id == f"builtin/{t.family}/{t.payload['seed']}"
        assert HouseholdEnv().reset(t).observation.endswith(f"Your task is to: {t.description}.")
    assert HouseholdTaskSource(seed_offset=5).sample("train", 20, 0) != src.sample("train", 20, 0)
    assert src.sample("eval", 0, 3) == []
    with pytest.raises(ValueError, match="train.*eval"):
        src.sample("test", 3, 0)


def test_registry_builds_the_builtin_env():
    env, src = make_env("builtin", max_steps=7), make_task_source("builtin")
    assert isinstance(env, HouseholdEnv) and env.max_steps == 7 and isinstance(src, HouseholdTaskSource)


def test_thousand_expert_episodes_run():
    env, won = HouseholdEnv(), 0
    for t in HouseholdTaskSource().sample("eval", 1000, seed=2):
        env.reset(t)
        for a in expert_actions(t):
            result = env.step(a)
        won += result.won
    assert won == 1000
