"""FaultyEnv: the built-in household env with one injected fault, for tests and chaos drills of the pools.

On step `fail_on_step` of an episode (0: never) it raises, hangs, or kills its whole process (`mode`). With `marker`
set the fault fires once per marker file (the file is created when it fires), so the re-queued episode
and the restarted pool then run clean; without it every episode fails at that step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from skill1.envs.base import StepResult
from skill1.envs.builtin import HouseholdEnv
from skill1.types import Task

MODES = ("raise", "hang", "crash")


class FaultyEnv:
    def __init__(self, max_steps: int, mode: str = "raise", fail_on_step: int = 1, marker: str | None = None,
                 hang_s: float = 3600.0, step_delay_s: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"FaultyEnv mode must be one of {MODES}, got {mode!r}")
        self.inner = HouseholdEnv(max_steps=max_steps)
        self.max_steps, self.mode, self.fail_on_step = max_steps, mode, fail_on_step
        self.marker, self.hang_s = (Path(marker) if marker else None), hang_s
        self.step_delay_s = step_delay_s  # a slow engine, for timing tests
        self.steps = 0

    def reset(self, task: Task) -> StepResult:
        self.steps = 0
        return self.inner.reset(task)

    def step(self, action: str) -> StepResult:
        self.steps += 1
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.steps == self.fail_on_step and self._arm():
            if self.mode == "raise":
                raise RuntimeError("injected environment fault")
            if self.mode == "hang":
                time.sleep(self.hang_s)
            else:
                os._exit(17)  # like a segfault in a native engine: no cleanup, no exception
        return self.inner.step(action)

    def _arm(self) -> bool:
        if self.marker is None:
            return True
        try:
            with open(self.marker, "x"):  # atomic: exactly one environment fires per marker
                return True
        except FileExistsError:
            return False
