"""The ALFWorld adapter on the real TextWorld engine, played on format-true fixture games (tests/fixtures/alfworld).

Fixture numbers are never ALFWorld results; `test_real_alfworld_games` runs on the released games when
ALFWORLD_DATA points at them, and is skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import pytest

from skill1.envs.alfworld import (
    DATA_DIR,
    FAMILIES,
    NOTHING,
    SPLITS,
    TASK_TYPE_FAMILIES,
    AlfworldDataError,
    AlfworldEnv,
    AlfworldTaskSource,
    discover_games,
    expert_actions,
    find_data_root,
    handcoded_plan,
    success_by_type,
)
from skill1.types import Task

for engine_module in ("textworld", "alfworld"):  # skill1.envs.alfworld imports the engine only when it plays
    pytest.importorskip(engine_module, reason="the ALFWorld engine is not installed: pip install 'skill1[alfworld]'")

FIXTURES = Path(__file__).parent / "fixtures" / "alfworld"
FIXTURE_TRIAL = re.compile(r"trial_T2019090\d_000000_00000\d$")  # the trial names make_games writes
NO_REAL_DATA = "no real ALFWorld games on this machine: set ALFWORLD_DATA (see README)"


def _make_games_module():
    spec = importlib.util.spec_from_file_location("alfworld_make_games", FIXTURES / "make_games.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The six fixture games of every split, written once per session (the parent of json_2.1.1)."""
    root = tmp_path_factory.mktemp("alfworld")
    _make_games_module().make_games(root)
    return root


@pytest.fixture(scope="session")
def source(data_root) -> AlfworldTaskSource:
    return AlfworldTaskSource(data_root=str(data_root))


@pytest.fixture(scope="module")
def env(data_root):
    """One env for the module: every reset loads another game into the same engine, as a pool worker does."""
    e = AlfworldEnv(max_steps=50, data_root=str(data_root))
    yield e
    e.close()


def _task(source: AlfworldTaskSource, family: str, split: str = "eval_out_of_distribution") -> Task:
    return next(t for t in source.sample(split, len(FAMILIES), seed=0) if t.family == family)


def _play(env: AlfworldEnv, task: Task, actions: list[str]):
    result = env.reset(task)
    for action in actions:
        result = env.step(action)
    return result


def test_fixture_games_have_the_official_layout(data_root):
    for split in SPLITS.values():
        trials = sorted((data_root / DATA_DIR / split).glob("*/trial_*"))
        assert {t.parent.name.split("-")[0] for t in trials} == set(TASK_TYPE_FAMILIES)
        for trial in trials:
            assert {p.name for p in trial.iterdir()} == {"traj_data.json", "initial_state.pddl", "game.tw-pddl"}
            game = json.loads((trial / "game.tw-pddl").read_text())
            assert list(game) == ["pddl_domain", "grammar", "pddl_problem", "solvable"] and game["solvable"]


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_wins_each_task_type(env, source, family):
    task = _task(source, family)
    plan = expert_actions(task)
    result = _play(env, task, plan)
    assert result.won and result.done and result.reward == 1.0
    assert task.family == family == TASK_TYPE_FAMILIES[result.info["task_type"]]
    assert result.info == {"task_id": task.task_id, "family": family, "steps": len(plan),
                           "task_type": result.info["task_type"], "game_file": task.payload["game_file"]}


def test_handcoded_expert_wins_when_asked_directly(source):
    """The fallback behind the planner: ALFWorld's own handcoded expert, stepped to a win."""
    task = _task(source, "Clean")
    plan = handcoded_plan(task.payload["game_file"])
    assert plan is not None and "help" not in plan
    result = _play(AlfworldEnv(data_root=None), task, plan)
    assert result.won


def test_reset_shows_room_and_task_and_lists_admissible_actions(env, source):
    task = _task(source, "Pick")
    result = env.reset(task)
    assert result.observation.startswith("You are in the middle of a room. Looking quickly around you, you see ")
    assert result.observation.endswith(f"Your task is to: {task.description}.")
    assert task.description == "put a mug in cabinet"
    assert not result.done and not result.won and result.reward == 0.0 and result.info["steps"] == 0
    assert {"look", "inventory", "go to cabinet 1", "go to countertop 1"} <= set(result.admissible_actions)
    assert "help" not in result.admissible_actions
    after = env.step("go to countertop 1")
    assert "take mug 1 from countertop 1" in after.admissible_actions and "help" not in after.admissible_actions


def test_inadmissible_action_is_not_sent_to_the_engine(env, source):
    task = _task(source, "Heat")
    first, second = expert_actions(task)[:2]
    reference = _play(env, task, [first, second])

    env.reset(task)
    env.step(first)
    engine_steps = []
    real_step = env._engine.step
    env._engine.step = lambda command: engine_steps.append(command) or real_step(command)
    for bad in ("help", "put potato 1 in/on fridge 1", "fly to the moon"):  # the engine knows the first two
        before = env._admissible
        result = env.step(bad)
        assert result.observation == NOTHING and not result.won and result.reward == 0.0
        assert result.admissible_actions == before
    assert engine_steps == []
    result = env.step(second)
    assert engine_steps == [second]
    assert result.info["steps"] == reference.info["steps"] + 3
    assert (result.observation, result.admissible_actions) == (reference.observation, reference.admissible_actions)


def test_max_steps_ends_the_episode_unwon(data_root, source):
    short = AlfworldEnv(max_steps=3, data_root=str(data_root))
    short.reset(_task(source, "Cool"))
    results = [short.step(a) for a in ("look", "inventory", "not a command")]
    assert [r.done for r in results] == [False, False, True]
    assert not results[-1].won and results[-1].reward == 0.0 and results[-1].info["steps"] == 3
    with pytest.raises(RuntimeError, match="done"):
        short.step("look")
    with pytest.raises(ValueError, match="max_steps"):
        AlfworldEnv(max_steps=0)


def test_splits_map_to_the_release_folders(source, data_root):
    for split, folder in SPLITS.items():
        tasks = source.sample(split, 6, seed=3)
        assert {t.family for t in tasks} == set(FAMILIES)
        for t in tasks:
            assert t.env == "alfworld" and t.task_id.startswith(f"alfworld/{split}/")
            assert Path(t.payload["game_file"]).is_relative_to(data_root / DATA_DIR / folder)
    assert source.families() == ["Pick", "Look", "Clean", "Heat", "Cool", "Pick2"]


def _ids(tasks: list[Task]) -> list[str]:
    return [t.task_id for t in tasks]


def test_sampling_is_deterministic_distinct_then_cycles(source):
    assert _ids(source.sample("train", 4, seed=7)) == _ids(source.sample("train", 4, seed=7))
    assert len({tuple(_ids(source.sample("train", 6, seed=s))) for s in range(5)}) > 1
    assert len(set(_ids(source.sample("train", 6, seed=7)))) == 6
    many = _ids(source.sample("train", 14, seed=7))
    assert sorted(many.count(i) for i in set(many)) == [2, 2, 2, 2, 3, 3]
    assert set(many[:6]) == set(many[6:12])  # each pass over the split is a full shuffle of it
    assert source.sample("train", 0, seed=7) == []


def test_bad_split_names_the_valid_ones(source):
    with pytest.raises(ValueError, match="train, eval_in_distribution, eval_out_of_distribution"):
        source.sample("valid_unseen", 1, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        source.sample("train", -1, seed=0)


def test_discovery_skips_games_alfredtwenv_skips(data_root, tmp_path):
    split = tmp_path / DATA_DIR / "valid_seen"
    shutil.copytree(data_root / DATA_DIR / "valid_seen", split)
    pick = next(split.glob("pick_and_place_simple-*"))
    skipped = ("pick_and_place_with_movable_recep-Mug-Pan-Cabinet-1", "pick_and_place_simple-AppleSliced-None-Fridge-1",
               "pick_heat_then_place_in_recep-Egg-None-Fridge-1", "pick_cool_then_place_in_recep-Egg-None-Fridge-1",
               "pick_clean_then_place_in_recep-Egg-None-Fridge-1", "unknown_task-Egg-None-Fridge-1")
    for name in skipped:
        shutil.copytree(pick, split / name)
    for name, edit in (("pick_heat", lambda g: {**g, "solvable": False}),
                       ("pick_cool", lambda g: {k: v for k, v in g.items() if k != "solvable"})):
        game_file = next(split.glob(f"{name}*Egg*/trial_*/game.tw-pddl"))
        game_file.write_text(json.dumps(edit(json.loads(game_file.read_text()))))
    next(split.glob("pick_clean*Egg*/trial_*/game.tw-pddl")).unlink()

    games = discover_games(split)
    originals = sorted(p.name for p in (data_root / DATA_DIR / "valid_seen").iterdir())
    assert [g.rel_dir.split("/")[0] for g in games] == originals
    assert all(g.game_file.is_absolute() and g.goal for g in games)


def test_success_by_type_per_family_and_overall():
    rates = success_by_type([("Pick", True), ("pick_and_place_simple", False), ("Pick2", True), ("Look", False)])
    assert rates["Pick"] == 0.5 and rates["Pick2"] == 1.0 and rates["Look"] == 0.0 and rates["overall"] == 0.5
    assert all(math.isnan(rates[f]) for f in ("Clean", "Heat", "Cool"))  # no episodes is not failure
    assert list(rates) == [*FAMILIES, "overall"]
    assert math.isnan(success_by_type([])["overall"])
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        success_by_type([("Slice", True)])


def test_missing_data_fails_with_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    for attempt in (lambda: find_data_root(None), lambda: AlfworldTaskSource(), lambda: find_data_root(tmp_path)):
        with pytest.raises(AlfworldDataError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith("no ALFWorld games found at ") and "\n" not in message
        assert "alfworld-download" in message and "ALFWORLD_DATA" in message and "env.data_path" in message
    with pytest.raises(AlfworldDataError, match=str(tmp_path)):
        find_data_root(tmp_path)
    (tmp_path / DATA_DIR / "valid_unseen").mkdir(parents=True)  # the folders but no games: fails on first use
    with pytest.raises(AlfworldDataError, match="valid_unseen"):
        AlfworldTaskSource(tmp_path).sample("eval_out_of_distribution", 1, seed=0)


def test_data_root_from_argument_or_alfworld_data(monkeypatch, data_root, tmp_path):
    json_dir = (data_root / DATA_DIR).resolve()
    monkeypatch.setenv("ALFWORLD_DATA", str(data_root))
    assert find_data_root(None) == json_dir
    monkeypatch.setenv("ALFWORLD_DATA", str(json_dir))
    assert find_data_root(None) == json_dir
    assert AlfworldTaskSource().root == json_dir
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))  # the argument wins over the variable
    assert find_data_root(str(data_root)) == json_dir


def test_task_ids_resolve_on_another_machine(data_root, source):
    task = _task(source, "Look")
    moved = Task(task.task_id, task.env, task.family, task.description, {"game_file": "/elsewhere/game.tw-pddl"})
    e = AlfworldEnv(data_root=str(data_root))
    assert e.reset(moved).info["game_file"] == task.payload["game_file"]
    e.close()
    with pytest.raises(AlfworldDataError, match="not found"):
        AlfworldEnv(data_root=str(data_root)).reset(Task("alfworld/train/nope/trial_x", "alfworld", "Pick", "", {}))


def test_registry_builds_the_alfworld_env(data_root):
    from skill1.envs.registry import make_env, make_task_source

    tasks = make_task_source("alfworld", data_root=str(data_root)).sample("train", 1, seed=0)
    e = make_env("alfworld", max_steps=7, data_root=str(data_root))
    assert isinstance(e, AlfworldEnv) and e.max_steps == 7 and e.reset(tasks[0]).admissible_actions
    e.close()


def _downward_copies() -> int:
    with open("/proc/self/maps") as f:
        return len({line.split()[-1] for line in f if "libdownward" in line})


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_engines_are_reused_not_leaked(data_root, source):
    """Every engine maps a private 34 MB Fast Downward copy that cannot be unloaded: resets and new envs reuse."""
    tasks = source.sample("eval_in_distribution", 6, seed=0)
    e = AlfworldEnv(data_root=str(data_root))
    e.reset(tasks[0])
    copies = _downward_copies()
    for task in tasks * 2:
        e.reset(task)
    e.close()
    again = AlfworldEnv(data_root=str(data_root))
    again.reset(tasks[1])
    again.close()
    assert _downward_copies() == copies


def test_engine_leaves_sys_argv_alone(env, source, monkeypatch):
    """Fast Downward's translator rewrites sys.argv on every reset; the adapter puts it back."""
    monkeypatch.setattr(sys, "argv", ["skill1", "train", "--config", "x.yaml"])
    env.reset(_task(source, "Pick2"))
    env.step("look")
    assert sys.argv == ["skill1", "train", "--config", "x.yaml"]


def test_engines_in_separate_threads_play_independently(data_root, source):
    tasks = source.sample("train", 6, seed=1)
    plans = {t.task_id: expert_actions(t) for t in tasks}
    outcomes: list[bool] = []

    def worker(chunk: list[Task]) -> None:
        e = AlfworldEnv(data_root=str(data_root))
        for _ in range(2):
            outcomes.extend(_play(e, t, plans[t.task_id]).won for t in chunk)
        e.close()

    threads = [threading.Thread(target=worker, args=(tasks[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [True] * 12


def _real_data_root() -> Path | None:
    """json_2.1.1 from ALFWORLD_DATA if it holds the released games (many, and not our fixtures), else None."""
    try:
        root = find_data_root(None)
    except AlfworldDataError:
        return None
    trials = [Path(r) for r, _, files in os.walk(root / "valid_unseen") if "traj_data.json" in files]
    return root if sum(not FIXTURE_TRIAL.search(t.name) for t in trials) >= 100 else None


def test_real_alfworld_games():
    """The released games: the splits hold what ALFWorld reports, and the expert wins one game of every type."""
    root = _real_data_root()
    if root is None:
        pytest.skip(NO_REAL_DATA)
    source = AlfworldTaskSource(root)
    assert len(source.games("eval_out_of_distribution")) >= 100 and len(source.games("eval_in_distribution")) >= 100
    e = AlfworldEnv(data_root=str(root))
    for family in FAMILIES:
        game = next(g for g in source.games("eval_out_of_distribution") if g.family == family)
        task = source.task("eval_out_of_distribution", game)
        first = e.reset(task)
        assert f"Your task is to: {task.description}" in first.observation and "help" not in first.admissible_actions
        result = _play(e, task, expert_actions(task))
        assert result.won and result.reward == 1.0, task.task_id
    e.close()
