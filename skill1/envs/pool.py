"""EnvPool: many live environments in one process (a Ray actor in training).

Slots are owned by the caller (the rollout worker): `reset` (re)creates the environment of a slot,
`step` advances it, `release` frees it. Each call carries whatever operations are ready at that moment,
for any slots: trajectories advance independently, never in lock-step across a batch.

Failure model, in two layers:
- an environment that *raises* fails only its own slot: the call returns `EnvFailure` for it, drops that
  environment, and serves the other slots normally;
- a pool process that *dies* (segfault, OOM, kill) or *hangs* (a step past `step_timeout_s`) is the caller's
  to detect: the worker kills a hung pool, Ray restarts the actor (`max_restarts`), and every episode that
  had an environment in it is re-queued (see `skill1.rollout.worker`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from dataclasses import dataclass

from skill1.envs.base import StepResult, TextEnv
from skill1.envs.registry import make_env
from skill1.types import Task


@dataclass
class EnvFailure:
    """An environment raised (or its slot is gone): the episode is re-queued, not scored."""

    error: str
    pool_restarted: bool = False  # the slot is gone because this pool process is a restart (first report only)


@dataclass
class PoolStats:
    node: str  # Ray node id ("local" outside Ray)
    pid: int
    envs: int  # live environments
    rss_bytes: int  # resident memory of the whole pool process
    resets: int
    steps: int
    failures: int
    reset_p50_ms: float  # latency of one reset, over the last 10k resets
    step_p50_ms: float  # latency of one step, over the last 10k steps
    step_p99_ms: float


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _reconstructed() -> bool:
    """True in an actor that Ray restarted; False in a first incarnation or outside an actor (tests, benches)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False
    # Ray 2.60's own property reads its deprecated `actor_id` inside and warns (3 lines per pool, every run);
    # the documented alternative, `ray.util.state.get_actor`, needs the dashboard, which local runs leave out
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This API is deprecated", category=DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed


class EnvPool:
    def __init__(self, env_name: str, max_steps: int, env_options: dict | None = None):
        self.env_name, self.max_steps, self.env_options = env_name, max_steps, dict(env_options or {})
        self.envs: dict[int, TextEnv] = {}
        self.resets = self.steps = self.failures = 0
        self._reset_ms: deque[float] = deque(maxlen=10_000)
        self._step_ms: deque[float] = deque(maxlen=10_000)
        # a restarted actor (killed, crashed) starts empty; the first caller to find its slot gone is told so,
        # even when no call of its was in flight at the moment of death
        self._restart_unreported = _reconstructed()

    def _run(self, slot: int, op, latencies: deque) -> StepResult | EnvFailure:
        t0 = time.perf_counter()
        try:
            return op()
        except Exception as exc:  # one broken environment must not take the others down
            self.failures += 1
            self._close(self.envs.pop(slot, None))
            return EnvFailure(f"{type(exc).__name__}: {exc}")
        finally:
            latencies.append((time.perf_counter() - t0) * 1e3)

    @staticmethod
    def _close(env: TextEnv | None) -> None:
        close = getattr(env, "close", None)  # engines with native resources (TextWorld) free them here
        if close is not None:
            try:
                close()
            except Exception:
                pass  # a broken environment may fail to close too; it is gone either way

    def reset(self, items: list[tuple[int, Task]]) -> list[StepResult | EnvFailure]:
        out = []
        for slot, task in items:
            def op(slot=slot, task=task):
                env = self.envs.get(slot)
                if env is None:
                    env = self.envs[slot] = make_env(self.env_name, self.max_steps, **self.env_options)
                return env.reset(task)

            out.append(self._run(slot, op, self._reset_ms))
            self.resets += 1
        return out

    def step(self, items: list[tuple[int, str]]) -> list[StepResult | EnvFailure]:
        out = []
        for slot, action in items:
            env = self.envs.get(slot)
            if env is None:
                out.append(EnvFailure(f"no environment in slot {slot} (released, or the pool restarted)",
                                      pool_restarted=self._restart_unreported))
                self._restart_unreported = False
                continue
            out.append(self._run(slot, lambda env=env, action=action: env.step(action), self._step_ms))
            self.steps += 1
        return out

    def release(self, slots: list[int]) -> None:
        for slot in slots:
            self._close(self.envs.pop(slot, None))

    def size(self) -> int:
        return len(self.envs)

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> PoolStats:
        import psutil

        resets, steps = sorted(self._reset_ms), sorted(self._step_ms)
        return PoolStats(_node_id(), os.getpid(), len(self.envs), psutil.Process().memory_info().rss, self.resets, self.steps,
                         self.failures, _percentile(resets, 0.5), _percentile(steps, 0.5), _percentile(steps, 0.99))
