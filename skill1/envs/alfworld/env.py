"""ALFWorld episodes on the real TextWorld engine, and the expert that solves them.

Each game is played by TextWorld's PDDL engine under ALFWorld's own wrappers (`AlfredDemangler` names entities
"mug 1", `AlfredInfos` reports the game file), the stack `textworld.gym` builds for `AlfredTWEnv`.

Engine facts that shape this module (measured, alfworld 0.4.2 / textworld 1.7.0 / fast-downward-textworld 20.6.4):
- every engine dlopens a private copy of Fast Downward (libdownward.so, 32 MiB, copied into $TMPDIR and deleted
  there) that TextWorld never unloads: each engine pins 32 MiB of $TMPDIR (RAM where /tmp is tmpfs) and ~1.2 MB
  RSS until the process exits, so one `textworld.gym.make` per game would leak that much per reset. Unloading
  the copy ourselves (`fast_downward.close_lib`) makes the interpreter segfault at exit. So engines are never
  thrown away: an `AlfworldEnv` loads each game into its one engine, and a closed env hands its engine on.
- the engine is not thread-safe, even across engines: loading, resetting and stepping all go through TextWorld's
  module-level tatsu parsers (grammar derivation runs on every step), and two threads loading games at once fail
  with tatsu parse errors; Fast Downward's translator (run at every reset) keeps its options in module globals,
  swaps sys.stdout while it works and sets sys.argv to ["translate.py", "domain", "task"]. One process-wide lock
  serialises every engine call here and sys.argv is put back; parallel play needs processes (one engine each).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from skill1.envs.alfworld.data import DEFAULT_MAX_STEPS, NOTHING, resolve_game_file, task_type_of
from skill1.envs.base import StepResult
from skill1.types import Task

HIDDEN_COMMANDS = ("help",)  # verl-agent drops it: it prints the grammar and changes nothing
_INTRO = "-= Welcome to TextWorld, ALFRED! =-"


def _request(*extras: str, **flags: bool):
    """What the engine reports each turn (`extra.gamefile` comes from AlfredInfos)."""
    import textworld

    return textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", *extras], **flags)


def _handcoded_wrappers() -> list:
    from alfworld.agents.environment.alfred_tw_env import AlfredExpert

    return [AlfredExpert(expert_type="handcoded")]


# Engine kinds: what each reports and which extra wrappers it carries. The planner's plan is TextWorld's
# "walkthrough", computed once at reset (asking for `policy_commands` would replan after every step).
_KINDS: dict[str, Callable[[], tuple]] = {
    "play": lambda: (_request(), []),
    "planner": lambda: (_request("walkthrough"), []),
    "handcoded": lambda: (_request("expert_plan", facts=True), _handcoded_wrappers()),
}
_idle: dict[str, list[tuple[object, str]]] = {kind: [] for kind in _KINDS}  # closed engines, with their last game
_lock = threading.RLock()  # guards `_idle` and every engine call (see the module docstring)


@contextlib.contextmanager
def _engine_call():
    """Hold the engine lock, and give the process back the sys.argv Fast Downward overwrites."""
    with _lock:
        argv = sys.argv
        try:
            yield
        finally:
            sys.argv = argv


def _start(kind: str, game_file: str):
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        from textworld.envs.wrappers import Filter
    except ImportError as e:
        raise ImportError("the ALFWorld engine is not installed: pip install 'skill1[alfworld]'") from e
    request, extra = _KINDS[kind]()
    wrappers = [AlfredDemangler(shuffle=False), AlfredInfos, *extra, Filter]
    return textworld.start(game_file, request, wrappers=wrappers)  # start() also loads the game


class _Engine:
    """A TextWorld PDDL engine of one kind; games are loaded into it one after another."""

    def __init__(self, kind: str):
        self.kind = kind
        self.game_file: str | None = None
        self._env = None

    def reset(self, game_file: str) -> dict:
        with _engine_call():
            if self._env is None and _idle[self.kind]:
                self._env, self.game_file = _idle[self.kind].pop()
            if self._env is None:
                self._env = _start(self.kind, game_file)
            elif game_file != self.game_file:  # a load re-parses domain and grammar (~80 ms): skip it for a replay
                self.game_file = None  # until the load has succeeded
                self._env.load(game_file)
            self.game_file = game_file
            obs, infos = self._env.reset()
        return {**infos, "obs": obs}

    def step(self, command: str) -> dict:
        with _engine_call():
            obs, _, _, infos = self._env.step(command)
        return {**infos, "obs": obs}

    def close(self) -> None:
        """Hand the engine to the next `_Engine` of this kind (it cannot be freed, see the module docstring)."""
        with _lock:
            if self._env is not None:
                _idle[self.kind].append((self._env, self.game_file))
            self._env, self.game_file = None, None


def _admissible(infos: dict) -> list[str]:
    return [c for c in infos["admissible_commands"] if c not in HIDDEN_COMMANDS]


class AlfworldEnv:
    """One ALFWorld game at a time on the real engine (implements `TextEnv`).

    An action outside the current admissible list is not sent to the engine: the reply is "Nothing happens.",
    the state is unchanged and the step still counts. Reward is 1.0 once the game is won, else 0.0.
    """

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, data_root: str | os.PathLike | None = None):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps, self.data_root = max_steps, data_root
        self.task: Task | None = None
        self.game_file: Path | None = None
        self.task_type = ""
        self.steps, self.done = 0, False
        self._admissible: list[str] = []
        self._engine = _Engine("play")

    def reset(self, task: Task) -> StepResult:
        """Load the task's game into the engine, replacing the previous game, and start it."""
        self.task = None  # a failed reset leaves nothing to step
        self.game_file = resolve_game_file(task, self.data_root)
        self.task_type = task_type_of(self.game_file.parents[1].name)  # .../<task folder>/<trial>/game.tw-pddl
        infos = self._engine.reset(str(self.game_file))
        self.task, self.steps, self.done = task, 0, False
        self._admissible = _admissible(infos)
        return self._result(infos["obs"].replace(_INTRO, "").strip(), won=bool(infos["won"]))

    def step(self, action: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("step() before reset()")
        if self.done:
            raise RuntimeError("step() after the episode is done; call reset()")
        self.steps += 1
        action, won, obs = action.strip(), False, NOTHING
        if action in self._admissible:
            infos = self._engine.step(action)
            obs, won, self._admissible = infos["obs"], bool(infos["won"]), _admissible(infos)
        self.done = won or self.steps >= self.max_steps
        return self._result(obs, won)

    def close(self) -> None:
        """Give the engine back for reuse; a later reset takes one again."""
        self._engine.close()
        self.task = None

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit the module may already be gone
            self.close()

    def _result(self, obs: str, won: bool) -> StepResult:
        info = {"task_id": self.task.task_id, "family": self.task.family, "steps": self.steps,
                "task_type": self.task_type, "game_file": str(self.game_file)}
        return StepResult(obs, list(self._admissible), reward=1.0 if won else 0.0, done=self.done, won=won,
                          info=info)


def expert_actions(task: Task, data_root: str | os.PathLike | None = None) -> list[str]:
    """A winning action sequence for the task's game, proven by playing it on the engine.

    First Fast Downward's plan; if it does not win, ALFWorld's handcoded expert stepped to the end. That expert
    cannot finish pick_two_obj_and_place in alfworld 0.4.2 (it recognises a placement by the word "put", which
    0.4 renamed "move"), hence the planner first.
    """
    game_file = str(resolve_game_file(task, data_root))
    for expert in (planner_plan, handcoded_plan):
        actions = expert(game_file)
        if actions is not None:
            return actions
    raise RuntimeError(f"neither the planner nor the handcoded expert wins {task.task_id}")


def planner_plan(game_file: str) -> list[str] | None:
    """Fast Downward's plan for the game if playing it wins, else None."""
    engine = _Engine("planner")
    try:
        infos = engine.reset(game_file)
        plan = list(infos["extra.walkthrough"] or [])  # [] when the planner finds no plan
        for action in plan:
            if action not in _admissible(infos):
                return None
            infos = engine.step(action)
        return plan if infos["won"] else None
    finally:
        engine.close()


def handcoded_plan(game_file: str, limit: int = 150) -> list[str] | None:
    """The actions of ALFWorld's handcoded expert played to a win (within `limit` steps), else None."""
    engine = _Engine("handcoded")
    saved = random.getstate()
    random.seed(0)  # the expert breaks ties with the global `random`: seeded for a repeatable plan, then restored
    actions: list[str] = []
    try:
        infos = engine.reset(game_file)
        while not infos["won"] and len(actions) < limit:
            action = infos["extra.expert_plan"][0]  # always admissible: AlfredExpert falls back to "look"
            infos = engine.step(action)
            if action not in HIDDEN_COMMANDS:  # "help" changes nothing, and AlfworldEnv does not offer it
                actions.append(action)
        return actions if infos["won"] else None
    except Exception:  # noqa: BLE001 - the expert gives up by raising Exception (timeout), NameError, IndexError
        return None
    finally:
        random.setstate(saved)
        engine.close()
