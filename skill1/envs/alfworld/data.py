"""ALFWorld data: where the games are, which are playable, and the tasks they make (no engine needed).

Games are the official release, `json_2.1.1/<split>/<task folder>/trial_*/{traj_data.json, game.tw-pddl}`, found
through `env.data_path` or `$ALFWORLD_DATA`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from skill1.envs.base import EnvDataError
from skill1.types import Task

DEFAULT_MAX_STEPS = 50  # ALFWorld's usual episode budget (verl-agent, ReAct)
INVALID_ACTION_PENALTY = 0.1  # verl-agent's value; the agent layer applies it, the env only says NOTHING
NOTHING = "Nothing happens."  # the engine's own reply to a command it cannot carry out
DATA_DIR = "json_2.1.1"
SPLITS = {"train": "train", "eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}
TASK_TYPE_FAMILIES = {  # ALFWorld task type -> the family name results are reported under
    "pick_and_place_simple": "Pick",
    "look_at_obj_in_light": "Look",
    "pick_clean_then_place_in_recep": "Clean",
    "pick_heat_then_place_in_recep": "Heat",
    "pick_cool_then_place_in_recep": "Cool",
    "pick_two_obj_and_place": "Pick2",
}
FAMILIES = tuple(TASK_TYPE_FAMILIES.values())
_GOAL = re.compile(r"Your task is to: ([^\"\n]+)")
_SKIPPED = ("movable", "Sliced")  # folders AlfredTWEnv refuses: movable receptacles and sliced objects


class AlfworldDataError(EnvDataError):
    """ALFWorld games are missing or malformed."""


def _missing(where: object) -> AlfworldDataError:
    return AlfworldDataError(
        f"no ALFWorld games found at {where}; get them with `pip install -e \".[alfworld]\"` and `alfworld-download` "
        f"(ALFWORLD_DATA=~/.cache/alfworld), then set env.data_path or ALFWORLD_DATA")


def find_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The `json_2.1.1` folder: `data_root` if given, else $ALFWORLD_DATA; either may name it or its parent."""
    raw = os.fspath(data_root) if data_root else os.environ.get("ALFWORLD_DATA")
    if not raw:
        raise _missing("<nowhere: neither env.data_path nor ALFWORLD_DATA is set>")
    base = Path(os.path.expandvars(raw)).expanduser()
    for candidate in (base / DATA_DIR, base):
        if candidate.is_dir() and any((candidate / folder).is_dir() for folder in SPLITS.values()):
            return candidate.resolve()
    raise _missing(base)


def split_folder(split: str) -> str:
    """The release folder of one of our split names ("eval_out_of_distribution" -> "valid_unseen")."""
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r} (valid splits: {', '.join(SPLITS)})")
    return SPLITS[split]


@dataclass(frozen=True)
class GameRecord:
    """One playable game, as discovered on disk."""

    game_file: Path  # absolute path of its game.tw-pddl
    rel_dir: str  # its folder relative to the split folder: "<task folder>/trial_..."
    task_type: str  # ALFWorld's task type, e.g. "pick_clean_then_place_in_recep"
    goal: str  # what the game says after "Your task is to: ", without the final period

    @property
    def family(self) -> str:
        return TASK_TYPE_FAMILIES[self.task_type]


def task_type_of(task_folder: str) -> str:
    """ALFWorld's task type from a game's task folder, named `<type>-<Obj>-<Mrecep>-<Recep>-<scene>`."""
    return task_folder.split("-", 1)[0]


def discover_games(split_dir: Path) -> list[GameRecord]:
    """The playable games under one split folder, sorted by path (os.walk order is filesystem-dependent).

    Skipped as `AlfredTWEnv` skips them: movable-receptacle and sliced-object tasks, task types outside the six,
    folders without both traj_data.json and game.tw-pddl, games not marked solvable.
    """
    games = []
    for root, _, files in os.walk(split_dir):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        rel = Path(root).relative_to(split_dir).as_posix()
        task_type = task_type_of(Path(rel).parts[0])
        if any(word in rel for word in _SKIPPED) or task_type not in TASK_TYPE_FAMILIES:
            continue
        game = _read_game(Path(root), rel, task_type)
        if game is not None:
            games.append(game)
    return sorted(games, key=lambda g: g.rel_dir)


def _read_game(folder: Path, rel: str, task_type: str) -> GameRecord | None:
    try:
        data = json.loads((folder / "game.tw-pddl").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AlfworldDataError(f"malformed ALFWorld game {folder / 'game.tw-pddl'}: {e}") from e
    if not data.get("solvable"):  # unsolvable, or never checked: AlfredTWEnv skips both
        return None
    match = _GOAL.search(data.get("grammar", ""))
    goal = match.group(1) if match and "UNKNOWN GOAL" not in match.group(1) else _annotated_goal(folder)
    return GameRecord((folder / "game.tw-pddl").resolve(), rel, task_type, goal.strip().rstrip("."))


def _annotated_goal(folder: Path) -> str:
    """Fallback task text for a game whose grammar carries none: the first human annotation."""
    traj = json.loads((folder / "traj_data.json").read_text())
    return traj["turk_annotations"]["anns"][0]["task_desc"]


class AlfworldTaskSource:
    """ALFWorld games as tasks (implements `TaskSource`); the data root is resolved at construction."""

    def __init__(self, data_root: str | os.PathLike | None = None):
        self.root = find_data_root(data_root)
        self._games: dict[str, list[GameRecord]] = {}  # discovery reads every game file: once per split

    def families(self) -> list[str]:
        return list(FAMILIES)

    def games(self, split: str) -> list[GameRecord]:
        """All playable games of a split, sorted by path."""
        folder = self.root / split_folder(split)
        if split not in self._games:
            games = discover_games(folder) if folder.is_dir() else []
            if not games:
                raise _missing(folder)
            self._games[split] = games
        return self._games[split]

    def sample(self, split: str, n: int, seed: int) -> list[Task]:
        """`n` tasks, a function of (split, seed) only: distinct games while `n` <= the split's size; beyond
        that, further seeded shuffles of the whole split follow, so every game appears n // size or one more times.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        games = self.games(split)
        rng = random.Random(f"alfworld/{split}/{seed}")
        picked: list[GameRecord] = []
        while len(picked) < n:
            order = list(games)
            rng.shuffle(order)
            picked += order
        return [self.task(split, g) for g in picked[:n]]

    @staticmethod
    def task(split: str, game: GameRecord) -> Task:
        return Task(task_id=f"alfworld/{split}/{game.rel_dir}", env="alfworld", family=game.family,
                    description=game.goal, payload={"game_file": str(game.game_file)})


def resolve_game_file(task: Task, data_root: str | os.PathLike | None = None) -> Path:
    """The task's game.tw-pddl: the recorded path, else the same game under this machine's data root (task ids
    carry over between machines, absolute paths do not)."""
    recorded = Path(task.payload.get("game_file", ""))
    if recorded.name and recorded.is_file():
        return recorded
    parts = task.task_id.split("/", 2)
    if len(parts) != 3 or parts[0] != "alfworld":
        raise AlfworldDataError(f"ALFWorld game for task {task.task_id!r} not found at {recorded}")
    game_file = find_data_root(data_root) / split_folder(parts[1]) / parts[2] / "game.tw-pddl"
    if not game_file.is_file():
        raise AlfworldDataError(f"ALFWorld game for task {task.task_id!r} not found at {recorded} or {game_file}")
    return game_file


def success_by_type(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Success rate per family (Pick, Look, Clean, Heat, Cool, Pick2) and "overall", from (type, success) pairs.

    A type may be given as the family name or ALFWorld's task type; a family without episodes is NaN (not 0: no
    evidence is not failure).
    """
    outcomes: dict[str, list[bool]] = {family: [] for family in FAMILIES}
    for kind, success in results:
        family = TASK_TYPE_FAMILIES.get(kind, kind)
        if family not in outcomes:
            raise ValueError(f"unknown ALFWorld task type {kind!r} (expected one of {', '.join(FAMILIES)})")
        outcomes[family].append(bool(success))
    overall = [s for v in outcomes.values() for s in v]
    return {**{family: _rate(v) for family, v in outcomes.items()}, "overall": _rate(overall)}


def _rate(outcomes: list[bool]) -> float:
    return sum(outcomes) / len(outcomes) if outcomes else float("nan")
