"""Environment name → (environment factory, task source). Adapters are imported only when named.

`options` carry what an adapter needs beyond `max_steps` (for alfworld/webshop: `data_root`; a WebShop task
source also takes `eval_size` / `validation_size`), so a pool actor can build its environments from plain,
picklable config values. An option an adapter does not take is a TypeError naming it, not silently dropped.
"""

from __future__ import annotations

import inspect

from skill1.config import ConfigError
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


def _checked(cls, name: str, options: dict):
    """`cls(**options)`, with an option it does not take reported as the config key to fix."""
    accepted = inspect.signature(cls).parameters
    for key in options:
        if key not in accepted:
            raise ConfigError(f"env.task_options.{key}: the {name} task source takes no option {key!r} "
                             f"(it takes: {', '.join(accepted) or 'none'})")
    return cls(**options)


def make_task_source(name: str, **options) -> TaskSource:
    if name in ("builtin", "faulty"):
        from skill1.envs.builtin import HouseholdTaskSource

        return _checked(HouseholdTaskSource, name, options)
    if name == "alfworld":
        from skill1.envs.alfworld import AlfworldTaskSource

        return _checked(AlfworldTaskSource, name, options)
    if name == "webshop":
        from skill1.envs.webshop import WebshopTaskSource

        return _checked(WebshopTaskSource, name, options)  # data_root, eval_size, validation_size
    raise ValueError(f"env.name: unknown environment {name!r} (available: {', '.join(map(repr, ENV_NAMES))})")
