"""Environment-pool benchmark: steps/s with 1 vs 2 pool actors, p99 step latency, memory per environment.

    python bench/env_pool_bench.py [--envs builtin,webshop,alfworld] [--seconds 20] [--per-pool 16]

A scripted expert plays (its action sequences are planned before the clock starts, so only the pools are
timed). The driver works like the rollout worker: one call in flight per pool actor, each call carrying every
operation that is ready at that moment for that pool's slots, and a finished episode's slot starts the next
task at once; nothing waits for the slowest trajectory. Each pool actor reserves one CPU and keeps
`--per-pool` episodes live, so 2 pools host twice the episodes: scale-out, as adding pools does in training.

Data: the built-in env is real; WebShop and ALFWorld run on the format-true test fixtures of tests/fixtures/
(labelled "fixture" in the table) unless WEBSHOP_DATA / ALFWORLD_DATA point at real data. Fixture figures
measure the engine and the pool, not benchmark results.

Memory per environment = (pool RSS with `--per-pool` live environments − RSS of the empty pool) / live envs;
for WebShop that excludes the product index, which every pool loads once and its environments share.
The last column is CPU-seconds per wall-second of the driver and of all pool actors (1.00 = one core busy), for 1
and for 2 pools: where the two together already fill the machine's cores, a second pool cannot add steps/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil  # noqa: E402
import ray  # noqa: E402

from skill1.envs.base import StepResult  # noqa: E402
from skill1.envs.pool import EnvFailure, EnvPool  # noqa: E402
from skill1.types import Task  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@dataclass
class Workload:
    name: str
    label: str  # "real" | "fixture"
    max_steps: int
    options: dict  # env constructor options (data_root)
    plays: list[tuple[Task, list[str]]]  # (task, expert actions)


def _builtin(n: int) -> Workload:
    from skill1.envs.builtin import HouseholdTaskSource
    from skill1.envs.builtin.household import expert_actions

    tasks = HouseholdTaskSource().sample("train", n, seed=0)
    return Workload("builtin", "real", 30, {}, [(t, expert_actions(t)) for t in tasks])


def _webshop(n: int, tmp: str) -> Workload:
    from skill1.envs.webshop import WebshopTaskSource, expert_actions

    root, label = os.environ.get("WEBSHOP_DATA"), "real"
    if not root:
        sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "webshop"))
        from make_fixture import write_fixture

        root, label = write_fixture(os.path.join(tmp, "webshop")), "fixture"
    source = WebshopTaskSource(data_root=root, eval_size=0, validation_size=0)
    tasks = source.sample("train", min(n, 64), seed=0)
    return Workload("webshop", label, 15, {"data_root": root}, [(t, expert_actions(t, root)) for t in tasks])


def _alfworld(n: int, tmp: str) -> Workload:
    from skill1.envs.alfworld import AlfworldTaskSource, expert_actions

    root, label = os.environ.get("ALFWORLD_DATA"), "real"
    if not root:
        sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "alfworld"))
        from make_games import make_games

        root, label = os.path.join(tmp, "alfworld"), "fixture"
        make_games(root)
    tasks = AlfworldTaskSource(data_root=root).sample("train", min(n, 24), seed=0)
    return Workload("alfworld", label, 50, {"data_root": root}, [(t, expert_actions(t)) for t in tasks])


class Driver:
    """Keeps `per_pool` expert episodes live on every pool until the deadline; counts steps and episodes."""

    def __init__(self, work: Workload, pools: list, per_pool: int):
        self.work, self.pools, self.per_pool = work, pools, per_pool
        self.next_play = 0
        self.cursor: dict[tuple[int, int], int] = {}  # (pool, slot) → index of the next expert action
        self.play_of: dict[tuple[int, int], int] = {}
        self.steps = self.episodes = self.failures = 0

    def _next_task(self, p: int, slot: int) -> tuple[int, Task]:
        i = self.next_play % len(self.work.plays)
        self.next_play += 1
        self.play_of[(p, slot)], self.cursor[(p, slot)] = i, 0
        return slot, self.work.plays[i][0]

    def run(self, seconds: float) -> float:
        inflight = {}
        for p, pool in enumerate(self.pools):
            inflight[pool.reset.remote([self._next_task(p, s) for s in range(self.per_pool)])] = (p, "reset", None)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            p, kind, slots = inflight.pop(ref)
            results = ray.get(ref)
            slots = slots or list(range(self.per_pool))
            resets, steps = [], []
            for slot, res in zip(slots, results):
                if isinstance(res, EnvFailure):
                    self.failures += 1
                    resets.append(self._next_task(p, slot))
                    continue
                if kind == "step":
                    self.steps += 1
                assert isinstance(res, StepResult)
                actions = self.work.plays[self.play_of[(p, slot)]][1]
                k = self.cursor[(p, slot)]
                if res.done or k >= len(actions):
                    self.episodes += 1
                    resets.append(self._next_task(p, slot))
                else:
                    self.cursor[(p, slot)] = k + 1
                    steps.append((slot, actions[k]))
            if time.perf_counter() >= deadline:
                continue  # drain: let the calls in flight come back, send nothing new
            # a pool serves its calls in order: a reset and a step call for it may both be in flight
            if steps:
                inflight[self.pools[p].step.remote(steps)] = (p, "step", [s for s, _ in steps])
            if resets:
                inflight[self.pools[p].reset.remote(resets)] = (p, "reset", [s for s, _ in resets])
        return time.perf_counter() - t0


def measure(work: Workload, n_pools: int, per_pool: int, seconds: float) -> dict:
    pools = [ray.remote(EnvPool).options(num_cpus=1).remote(work.name, work.max_steps, work.options)
             for _ in range(n_pools)]
    empty_rss = ray.get([p.stats.remote() for p in pools])
    procs = [psutil.Process(pid) for pid in ray.get([p.pid.remote() for p in pools])]
    pool_cpu0 = sum(sum(pr.cpu_times()[:2]) for pr in procs)
    driver_cpu0 = time.process_time()
    driver = Driver(work, pools, per_pool)
    wall = driver.run(seconds)
    # where the time goes: CPU-seconds per wall-second of the driver and of all pools (1.0 = one core busy)
    driver_cpu = (time.process_time() - driver_cpu0) / wall
    pool_cpu = (sum(sum(pr.cpu_times()[:2]) for pr in procs) - pool_cpu0) / wall
    stats = ray.get([p.stats.remote() for p in pools])
    for p in pools:
        ray.kill(p)
    mem = [(s.rss_bytes - e.rss_bytes) / max(1, s.envs) for s, e in zip(stats, empty_rss)]
    return {
        "steps_s": driver.steps / wall, "episodes_s": driver.episodes / wall, "failures": driver.failures,
        "step_p50_ms": max(s.step_p50_ms for s in stats), "step_p99_ms": max(s.step_p99_ms for s in stats),
        "reset_p50_ms": max(s.reset_p50_ms for s in stats), "mem_per_env_mb": sum(mem) / len(mem) / 2**20,
        "pool_rss_mb": max(s.rss_bytes for s in stats) / 2**20,
        "driver_cpu": driver_cpu, "pool_cpu": pool_cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="builtin,webshop,alfworld")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window per (env, pool count)")
    ap.add_argument("--per-pool", type=int, default=16, help="live episodes per pool actor")
    args = ap.parse_args()
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.envs.split(","):
            t0 = time.perf_counter()
            work = {"builtin": lambda: _builtin(256), "webshop": lambda: _webshop(256, tmp),
                    "alfworld": lambda: _alfworld(256, tmp)}[name]()
            print(f"{name}: planned {len(work.plays)} expert episodes in {time.perf_counter() - t0:.1f} s", flush=True)
            one = measure(work, 1, args.per_pool, args.seconds)
            two = measure(work, 2, args.per_pool, args.seconds)
            rows.append((work, one, two))
    print(f"\n{os.cpu_count()} CPUs; {args.per_pool} live episodes per pool; {args.seconds:.0f} s per measurement\n")
    head = (f"{'env':<10}{'data':<9}{'steps/s 1 pool':>15}{'2 pools':>10}{'ratio':>8}{'step p50 ms':>13}"
            f"{'p99 ms':>9}{'reset p50 ms':>14}{'MB/env':>9}{'pool RSS MB':>13}{'failures':>10}"
            f"{'cores: driver+pools 1|2':>25}")
    print(head)
    print("-" * len(head))
    for work, one, two in rows:
        print(f"{work.name:<10}{work.label:<9}{one['steps_s']:>15.0f}{two['steps_s']:>10.0f}"
              f"{two['steps_s'] / max(one['steps_s'], 1e-9):>7.2f}x{two['step_p50_ms']:>13.2f}"
              f"{two['step_p99_ms']:>9.2f}{two['reset_p50_ms']:>14.2f}{one['mem_per_env_mb']:>9.2f}"
              f"{one['pool_rss_mb']:>13.0f}{one['failures'] + two['failures']:>10}"
              f"{one['driver_cpu']:>12.2f}+{one['pool_cpu']:.2f} | {two['driver_cpu']:.2f}+{two['pool_cpu']:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
