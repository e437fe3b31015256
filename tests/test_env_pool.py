"""Environment pools: per-slot failures, and the rollout worker surviving raised, crashed, hung and killed pools.

The Ray tests use the scripted sampler (no model) and the `faulty` env (the built-in household with one
injected fault), so every fault is deterministic and a run takes seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from skill1.envs.base import StepResult
from skill1.envs.builtin import HouseholdTaskSource
from skill1.envs.pool import EnvFailure, EnvPool


def _tasks(n: int):
    return HouseholdTaskSource().sample("train", n, seed=3)


def test_pool_serves_slots_independently_and_isolates_a_raising_env(tmp_path):
    pool = EnvPool("faulty", max_steps=5, env_options={"mode": "raise", "fail_on_step": 2,
                                                       "marker": str(tmp_path / "fired")})
    first = pool.reset([(0, t) for t in _tasks(1)] + [(1, t) for t in _tasks(1)])
    assert all(isinstance(r, StepResult) for r in first)
    a0, a1 = first[0].admissible_actions[0], first[1].admissible_actions[0]
    assert all(isinstance(r, StepResult) for r in pool.step([(0, a0), (1, a1)]))
    second = pool.step([(0, a0), (1, a1)])  # step 2: the fault fires once, in slot 0 only
    assert isinstance(second[0], EnvFailure) and "injected" in second[0].error
    assert isinstance(second[1], StepResult)
    assert pool.size() == 1  # the broken environment is dropped
    gone = pool.step([(0, a0)])[0]
    assert isinstance(gone, EnvFailure) and "no environment in slot 0" in gone.error
    stats = pool.stats()
    assert (stats.resets, stats.steps, stats.failures, stats.envs) == (2, 4, 1, 1)
    assert stats.rss_bytes > 0 and stats.pid == os.getpid() and stats.step_p99_ms >= stats.step_p50_ms > 0 and stats.reset_p50_ms > 0


def test_unknown_env_and_mode_are_clear_errors():
    from skill1.envs.registry import make_env

    with pytest.raises(ValueError, match="env.name: unknown environment 'nope'"):
        make_env("nope", 5)
    with pytest.raises(ValueError, match="mode must be one of"):
        make_env("faulty", 5, mode="explode")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from skill1.config import load_config
    from skill1.runtime import init_ray

    if not ray.is_initialized():
        init_ray(load_config(None, ["name=pool-tests"]))
    yield ray


def _run(ray, tokenizer_dir, env_options: dict, n: int = 8, pools: int = 2, timeout_s: float = 60.0,
         retries: int = 2, during=None, max_steps: int = 6, env: str = "faulty", tasks=None):
    from skill1.envs.pool import EnvPool
    from skill1.rollout.host import SamplerHost
    from skill1.rollout.worker import RolloutWorker
    from skill1.types import EnvFaultPolicy, EpisodeSettings, RetrievalSettings, RolloutRequest

    pool_actors = [ray.remote(EnvPool).options(num_cpus=0, max_restarts=5).remote(env, max_steps, env_options)
                   for _ in range(pools)]
    sampler = ray.remote(SamplerHost).options(num_cpus=0).remote("scripted", tokenizer_dir, "float32", 0)
    worker = ray.remote(RolloutWorker).options(num_cpus=0).remote(tokenizer_dir, [sampler], pool_actors, None, "")
    settings = EpisodeSettings(use_library=False, enable_query_generation=False, enable_rerank=False,
                               enable_distillation=True, max_steps=max_steps, history_length=1,
                               max_skill_chars=200, max_new_tokens={s: 64 for s in __import__("skill1.types").types.Stage})
    tasks = tasks if tasks is not None else _tasks(n)
    n = len(tasks)
    req = RolloutRequest(tasks, [t.task_id for t in tasks], [f"e{i}" for i in range(n)], settings,
                         RetrievalSettings(3, 16, 0.0, 0.0), 1.0, 1.0, None, 0, EnvFaultPolicy(timeout_s, retries))
    ref = worker.run.remote(req)
    if during:
        during(pool_actors)
    episodes = ray.get(ref, timeout=120)
    stats = ray.get(worker.stats.remote())
    pool_stats = ray.get([p.stats.remote() for p in pool_actors])
    for a in [*pool_actors, sampler, worker]:
        ray.kill(a)
    return episodes, stats, pool_stats


@pytest.mark.slow
def test_worker_runs_episodes_across_pools_without_faults(ray_local, small_model_dir):
    episodes, stats, pools = _run(ray_local, small_model_dir, {"fail_on_step": 0}, n=8)
    assert len(episodes) == 8 and not any(e.env_failed for e in episodes)
    assert all(e.num_steps == 6 or e.success for e in episodes)  # an invalid action also costs a step
    assert sum(e.num_steps for e in episodes) > 0
    assert stats.env_faults == stats.requeued == stats.pool_restarts == 0
    # both pools served: the least-loaded pool takes each new episode (4 each), and each valid action was one
    # step in the pool that holds its episode
    assert [p.resets for p in pools] == [4, 4]
    assert sum(p.steps for p in pools) == sum(e.num_steps - e.num_invalid_actions for e in episodes) > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "crash", "hang"])
def test_worker_requeues_episodes_after_an_env_fault(ray_local, small_model_dir, tmp_path, mode):
    options = {"mode": mode, "fail_on_step": 2, "marker": str(tmp_path / "fired")}
    episodes, stats, _ = _run(ray_local, small_model_dir, options, n=6, timeout_s=2.0)
    assert len(episodes) == 6 and not any(e.env_failed for e in episodes)  # nobody scored 0 for the env's fault
    assert stats.env_faults >= 1 and stats.requeued == stats.env_faults
    if mode == "raise":  # only the broken slot's episode starts again
        assert stats.pool_restarts == 0 and sum(e.env_restarts for e in episodes) == 1
    else:  # the whole pool process went: every episode with an environment in it starts again
        assert stats.pool_restarts == 1 and sum(e.env_restarts for e in episodes) >= 1
    assert (tmp_path / "fired").exists()


@pytest.mark.slow
def test_episode_is_dropped_not_scored_after_max_retries(ray_local, small_model_dir):
    episodes, stats, _ = _run(ray_local, small_model_dir, {"mode": "raise", "fail_on_step": 1}, n=3, retries=1)
    assert all(e.env_failed and e.env_restarts == 1 and not e.segments for e in episodes)
    assert stats.failed_episodes == 3 and stats.requeued == 3


@pytest.mark.slow
def test_run_continues_when_a_pool_process_is_killed_by_pid(ray_local, small_model_dir):
    killed = {}

    def kill_first_pool(pool_actors):
        pid = ray_local.get(pool_actors[0].pid.remote())
        deadline = time.monotonic() + 30
        while ray_local.get(pool_actors[0].size.remote()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until it hosts live episodes
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    episodes, stats, pools = _run(ray_local, small_model_dir, {"fail_on_step": 0, "step_delay_s": 0.05}, n=6,
                                  during=kill_first_pool)
    assert "pid" in killed and pools[0].pid != killed["pid"]  # Ray brought the pool back as a new process
    assert len(episodes) == 6 and not any(e.env_failed for e in episodes)
    assert stats.pool_restarts == 1 and stats.requeued >= 1
    assert any(e.env_restarts for e in episodes)


@pytest.mark.slow
def test_alfworld_and_webshop_fixtures_run_through_pools_and_worker(ray_local, small_model_dir, tmp_path):
    """The benchmark adapters inside real pool actors, driven by the worker (scripted policy: random valid
    actions, `search[<query>]` filled with the task text)."""
    import sys

    from skill1.envs.alfworld import AlfworldTaskSource
    from skill1.envs.webshop import WebshopTaskSource

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "fixtures" / "alfworld"))
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "fixtures" / "webshop"))
    from make_fixture import write_fixture
    from make_games import make_games

    make_games(tmp_path / "alfworld")
    shop = write_fixture(tmp_path / "webshop")
    cases = [("alfworld", str(tmp_path / "alfworld"), AlfworldTaskSource(str(tmp_path / "alfworld")), 8),
             ("webshop", str(shop), WebshopTaskSource(str(shop), eval_size=10, validation_size=10), 5)]
    for env, root, source, max_steps in cases:
        tasks = source.sample("train", 4, seed=0)
        episodes, stats, _ = _run(ray_local, small_model_dir, {"data_root": root}, env=env, tasks=tasks,
                                  max_steps=max_steps)
        assert len(episodes) == 4 and not any(e.env_failed for e in episodes), stats.fault_log
        assert stats.env_faults == 0 and all(e.num_steps >= 1 for e in episodes)
        assert all(e.task.env == env for e in episodes)
        if env == "alfworld":  # reward 1 for a win, else 0
            assert all(e.outcome == float(e.success) for e in episodes)
        else:  # WebShop: the purchase's score, and a win is a score of 1
            assert all(e.success == (e.outcome == 1.0) for e in episodes)
