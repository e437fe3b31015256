"""EnvPool: many live environments in one process (a Ray actor in training), stepped in batches.

Slots are owned by the caller (the rollout worker): `reset` (re)creates the environment in a slot,
`step` advances it, `release` frees it. Timeouts and crash-restart arrive with issue 5.
"""

from __future__ import annotations

from skill1.envs.base import StepResult, TextEnv
from skill1.envs.registry import make_env
from skill1.types import Task


class EnvPool:
    def __init__(self, env_name: str, max_steps: int):
        self.env_name, self.max_steps = env_name, max_steps
        self.envs: dict[int, TextEnv] = {}

    def reset(self, items: list[tuple[int, Task]]) -> list[StepResult]:
        out = []
        for slot, task in items:
            env = self.envs.get(slot) or make_env(self.env_name, self.max_steps)
            self.envs[slot] = env
            out.append(env.reset(task))
        return out

    def step(self, items: list[tuple[int, str]]) -> list[StepResult]:
        return [self.envs[slot].step(action) for slot, action in items]

    def release(self, slots: list[int]) -> None:
        for slot in slots:
            self.envs.pop(slot, None)

    def size(self) -> int:
        return len(self.envs)
