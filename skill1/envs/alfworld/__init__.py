"""ALFWorld on the real TextWorld engine (install with `pip install 'skill1[alfworld]'`; games via ALFWORLD_DATA).

`data` finds and describes the games and needs no engine; `env` plays them. Results are ALFWorld results only on
the official games: the fixtures under tests/fixtures/alfworld are format-true stand-ins.
"""

from skill1.envs.alfworld.data import (
    DATA_DIR,
    DEFAULT_MAX_STEPS,
    FAMILIES,
    INVALID_ACTION_PENALTY,
    NOTHING,
    SPLITS,
    TASK_TYPE_FAMILIES,
    AlfworldDataError,
    AlfworldTaskSource,
    GameRecord,
    discover_games,
    find_data_root,
    resolve_game_file,
    split_folder,
    success_by_type,
    task_type_of,
)
from skill1.envs.alfworld.env import HIDDEN_COMMANDS, AlfworldEnv, expert_actions, handcoded_plan, planner_plan

__all__ = [
    "DATA_DIR", "DEFAULT_MAX_STEPS", "FAMILIES", "HIDDEN_COMMANDS", "INVALID_ACTION_PENALTY", "NOTHING", "SPLITS",
    "TASK_TYPE_FAMILIES", "AlfworldDataError", "AlfworldEnv", "AlfworldTaskSource", "GameRecord", "discover_games",
    "expert_actions", "find_data_root", "handcoded_plan", "planner_plan", "resolve_game_file", "split_folder",
    "success_by_type", "task_type_of",
]
