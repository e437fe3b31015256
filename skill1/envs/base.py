"""The contract every environment meets: text in, text out, admissible actions listed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from skill1.types import Task


class EnvDataError(RuntimeError):
    """Benchmark data (ALFWorld games, WebShop products) is missing or malformed; one line says how to fix it."""


@dataclass
class StepResult:
    observation: str
    admissible_actions: list[str]
    reward: float = 0.0  # task outcome so far, in [0, 1]
    done: bool = False
    won: bool = False
    info: dict = field(default_factory=dict)


class TextEnv(Protocol):
    """One live episode of a text environment.

    `step` is only called with an action from the last `admissible_actions`: the agent layer turns
    unparseable or inadmissible output into an invalid action (penalised) and does not step.
    """

    max_steps: int

    def reset(self, task: Task) -> StepResult: ...

    def step(self, action: str) -> StepResult: ...


class TaskSource(Protocol):
    """Where tasks come from, per split (train / eval), deterministic in the seed."""

    def sample(self, split: str, n: int, seed: int) -> list[Task]: ...

    def families(self) -> list[str]: ...
