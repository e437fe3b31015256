"""Environment name → (environment factory, task source). Adapters are imported only when named.

`options` carry what an adapter needs beyond `max_steps` (for alfworld/webshop: `data_root`), so a pool
actor can build its environments from plain, picklable config values.
"""

from __future__ import annotations

from skill1.envs.base import TaskSource, TextEnv

ENV_NAMES = ("builtin", "alfworld", "webshop", "faulty")  # faulty: fault injection for tests and drills


def make_env(name: str, max_steps: int, **options) -> TextEnv:
    if name == "builtin":
        from skill1.envs.builtin import HouseholdEnv

        return HouseholdEnv(max_steps=max_steps)
    if name == "alfworld":
        from skill1.envs.alfworld import AlfworldEnv

        return AlfworldEnv(max_steps=max_steps, data_root=options.get("data_root"))
    if name == "webshop":
        from skill1.envs.webshop import WebshopEnv

        return WebshopEnv(max_steps=max_steps, data_root=options.get("data_root"))
    if name == "faulty":
        from skill1.envs.faulty import FaultyEnv

        return FaultyEnv(max_steps=max_steps, **options)
    raise ValueError(f"env.name: unknown environment {name!r} (available: {', '.join(map(repr, ENV_NAMES))})")


def make_task_source(name: str, **options) -> TaskSource:
    if name in ("builtin", "faulty"):
        from skill1.envs.builtin import HouseholdTaskSource

        return HouseholdTaskSource()
    if name == "alfworld":
        from skill1.envs.alfworld import AlfworldTaskSource

        return AlfworldTaskSource(data_root=options.get("data_root"))
    if name == "webshop":
        from skill1.envs.webshop import WebshopTaskSource

        return WebshopTaskSource(data_root=options.get("data_root"))
    raise ValueError(f"env.name: unknown environment {name!r} (available: {', '.join(map(repr, ENV_NAMES))})")
