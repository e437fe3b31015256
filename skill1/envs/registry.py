"""Environment name → (environment factory, task source). Adapters register here by name."""

from __future__ import annotations

from skill1.envs.base import TaskSource, TextEnv


def make_env(name: str, max_steps: int) -> TextEnv:
    if name == "builtin":
        from skill1.envs.builtin import HouseholdEnv

        return HouseholdEnv(max_steps=max_steps)
    raise ValueError(f"env.name: unknown environment {name!r} (available: 'builtin')")


def make_task_source(name: str) -> TaskSource:
    if name == "builtin":
        from skill1.envs.builtin import HouseholdTaskSource

        return HouseholdTaskSource()
    raise ValueError(f"env.name: unknown environment {name!r} (available: 'builtin')")
