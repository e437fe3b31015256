"""WebShop tasks: index ranges of the shuffled human-goal list, as the paper's and verl-agent's scripts.

    eval        goals[:eval_size]                                  (500: the reported test set)
    validation  goals[eval_size : eval_size + validation_size]     (1000)
    train       goals[eval_size + validation_size:]                (the rest)

Small data (a fixture) sets smaller `eval_size` / `validation_size`. `sample` draws distinct goals with a
seeded RNG; when `n` exceeds the split it deals whole shuffled passes over the split one after another
(every goal once per pass), so goals repeat only then.
"""

from __future__ import annotations

import random

from skill1.envs.webshop.data import load_data
from skill1.types import Task

SPLITS = ("train", "validation", "eval")
EVAL_SIZE, VALIDATION_SIZE = 500, 1000


class WebshopTaskSource:
    """Tasks over the human goals (implements `TaskSource`); family = the goal product's top-level category."""

    def __init__(self, data_root: str | None = None, eval_size: int = EVAL_SIZE,
                 validation_size: int = VALIDATION_SIZE):
        if eval_size < 0 or validation_size < 0:
            raise ValueError(f"eval_size and validation_size must be >= 0, got {eval_size}, {validation_size}")
        self.data = load_data(data_root)
        self.eval_size, self.validation_size = eval_size, validation_size

    def split_indices(self, split: str) -> range:
        n, cut = len(self.data.goals), self.eval_size + self.validation_size
        if split == "eval":
            return range(min(self.eval_size, n))
        if split == "validation":
            return range(min(self.eval_size, n), min(cut, n))
        if split == "train":
            return range(min(cut, n), n)
        raise ValueError(f"unknown split {split!r} (valid splits: {', '.join(SPLITS)})")

    def families(self) -> list[str]:
        return sorted({g.category for g in self.data.goals})

    def task(self, goal_index: int) -> Task:
        goal = self.data.goals[goal_index]
        return Task(task_id=f"webshop/{goal_index}", env="webshop", family=goal.category,
                    description=goal.instruction_text, payload={"goal_index": goal_index})

    def sample(self, split: str, n: int, seed: int) -> list[Task]:
        indices = self.split_indices(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n and not indices:
            raise ValueError(
                f"webshop split {split!r} is empty: {len(self.data.goals)} goals with eval_size={self.eval_size}, "
                f"validation_size={self.validation_size} (pass smaller sizes for small data)")
        rng = random.Random(f"webshop/{split}/{seed}")
        chosen: list[int] = []
        while len(chosen) < n:
            chosen += rng.sample(indices, min(len(indices), n - len(chosen)))
        return [self.task(i) for i in chosen]
