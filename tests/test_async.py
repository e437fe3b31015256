"""The asynchronous actor-learner on local Ray: the streaming rollout worker, eta = 0 equal to the
synchronous loop, staleness bounded and counted. Scripted sampler (no model) + real learner, so runs
are deterministic and take seconds of compute."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skill1.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local(local_ray):
    """The suite's one local Ray instance (started here if no test before started it)."""
    import ray

    from skill1.runtime import init_ray

    init_ray(load_config(None, ["name=async-tests"]))
    return ray


def _request(tag: str, n: int, version: int, seed: int = 0):
    from skill1.envs.builtin import HouseholdTaskSource
    from skill1.types import EpisodeSettings, RetrievalSettings, RolloutRequest, Stage

    tasks = HouseholdTaskSource().sample("train", n, seed=seed)
    settings = EpisodeSettings(use_library=False, enable_query_generation=False, enable_rerank=False,
                               enable_distillation=True, max_steps=3, history_length=1, max_skill_chars=200,
                               max_new_tokens={s: 48 for s in Stage})
    return RolloutRequest(tasks, [tag] * n, [f"{tag}-{i}" for i in range(n)], settings,
                          RetrievalSettings(3, 16, 0.0, 0.0), 1.0, 1.0, None, version, tag=tag)


def test_streaming_worker_hands_back_requests_by_tag_stamped_with_the_sampler_version(ray_local, small_model_dir):
    from skill1.envs.pool import EnvPool
    from skill1.rollout.host import SamplerHost
    from skill1.rollout.worker import RolloutWorker
    from skill1.types import WeightsPacket

    ray = ray_local
    pool = ray.remote(EnvPool).options(num_cpus=0).remote("builtin", 3, {})
    sampler = ray.remote(SamplerHost).options(num_cpus=0).remote("scripted", small_model_dir, "float32", 0)
    worker = ray.remote(RolloutWorker).options(num_cpus=0, max_concurrency=4).remote(
        small_model_dir, [sampler], [pool], None, "")
    ray.get(worker.submit.remote([_request("a", 3, 0), _request("b", 2, 0, seed=1)]))
    ray.get(worker.submit.remote([_request("c", 2, 0, seed=2)]))
    done: dict[str, list] = {}
    deadline = time.monotonic() + 120
    while len(done) < 3 and time.monotonic() < deadline:
        done.update(dict(ray.get(worker.poll.remote(0.5)).completed))
    assert sorted(done) == ["a", "b", "c"] and [len(done[k]) for k in "abc"] == [3, 2, 2]
    assert [e.episode_id for e in done["a"]] == ["a-0", "a-1", "a-2"]  # request order kept
    assert all(e.policy_version == 0 and e.segments for eps in done.values() for e in eps)
    # new weights reach the sampler between calls: later episodes carry the version that generated them
    empty = WeightsPacket(version=5, names=[], shapes=[], dtype="float32", flat=np.zeros(0, dtype=np.float32))
    assert ray.get(sampler.load_weights.remote(empty)) == 5
    ray.get(worker.submit.remote([_request("d", 2, 0, seed=3)]))  # the driver's stamp (0) is overridden
    progress = ray.get(worker.poll.remote(60))
    assert progress.completed[0][0] == "d" and {e.policy_version for e in progress.completed[0][1]} == {5}
    assert progress.busy_s["sampler-0"] > 0 and progress.busy_s["pool-0"] > 0 and progress.live_episodes == 0
    with pytest.raises(ray.exceptions.RayTaskError, match="streaming"):
        ray.get(worker.run.remote(_request("e", 1, 0)))
    ray.get(worker.stop.remote())  # streaming over: the worker runs a request synchronously again (evaluation)
    [episode] = ray.get(worker.run.remote(_request("e", 1, 0)))
    assert episode.episode_id == "e-0" and episode.segments and not episode.env_failed
    for a in (pool, sampler, worker):
        ray.kill(a)


def _train(model_dir: str, out: Path, name: str, *overrides: str):
    from skill1.loop.train import train

    cfg = load_config(ROOT / "pipelines/configs/quickstart.yaml", [
        f"output_dir={out}", f"name={name}", f"model.path={model_dir}", "rollout.backend=scripted",
        "learner.backend=torch", "learner.lr=1e-3", "algorithm.iterations=3", "algorithm.tasks_per_iteration=2",
        "algorithm.group_size=2", "env.max_steps=3", "logging.wandb_mode=disabled", "logging.progress=false",
        "rollout.max_new_tokens_act=32", "rollout.max_new_tokens_distill=32", "eval_at_ends=false", "eval_every=0",
        # the scripted policy never wins: its deliberate invalid actions (penalised) are the learning signal
        "rollout.constrain_actions=false", *overrides])
    result = train(cfg)
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    return result, metrics


_SCHEDULE_KEYS = ("time/", "async/", "rollout/generate_calls", "env/calls", "learner/update_s", "learner/tokens_per_s", "learner/proximal_s",
                  "learner/peak_", "library/version")  # wall-clock and bookkeeping, not the algorithm


def _algorithmic(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith(_SCHEDULE_KEYS)}


def test_eta_zero_reproduces_the_synchronous_run_exactly(ray_local, small_model_dir, tmp_path):
    from skill1.library import Encoder, SkillLibrary
    from skill1.models.tiny import load_policy

    # two iterations: the second retrieves from the library the first wrote, and trains on weights it synced
    sync, m_sync = _train(small_model_dir, tmp_path, "sync", "rollout.mode=sync", "algorithm.iterations=2")
    asyn, m_async = _train(small_model_dir, tmp_path, "async0", "rollout.mode=async", "rollout.max_staleness=0",
                           "algorithm.iterations=2")
    assert len(m_sync) == len(m_async) == 2
    assert m_sync[1]["select/with_candidates"] > 0  # the library really was in the loop
    for a, b in zip(m_sync, m_async):
        assert _algorithmic(a) == _algorithmic(b)  # rewards, credit, losses, grad norms, library: identical
    assert all(m["learner/loss"] != 0 for m in m_sync)  # it really learned something to compare
    assert all(m["async/staleness_max"] == 0 for m in m_async)

    def skills(result):
        enc = Encoder("all-MiniLM-L6-v2")
        lib = SkillLibrary.open(str(result.library_path), enc.name, enc.dim)
        return sorted((s.scenario, s.strategy, round(s.utility, 9), s.uses, s.source_episode)
                      for s in lib.all_skills())

    assert skills(sync) == skills(asyn) and len(skills(sync)) > 0
    a, _ = load_policy(str(sync.checkpoint))
    b, _ = load_policy(str(asyn.checkpoint))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_async_run_bounds_staleness_and_keeps_the_admission_invariant(ray_local, small_model_dir, tmp_path):
    # the library bound off: only the policy bound admits, so batches 2 and 3 start beside batch 1 (with the
    # library bound, whether one starts before the first weight sync is a race against the learner)
    _, metrics = _train(small_model_dir, tmp_path, "async2", "rollout.mode=async", "rollout.max_staleness=2",
                        "algorithm.iterations=4", "rollout.max_library_staleness=2")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert m["async/staleness_max"] <= 2 and m["async/capacity_headroom_min"] >= 0
        assert m["async/submitted"] == m["async/accepted"] + m["async/dropped"] + m["async/running"]
        # every sampler acknowledged the learner's new version before the iteration was logged
        assert m["policy/version"] == m["learner/version"] == m["step"]
        assert sum(m[f"async/staleness/{s}"] for s in range(3)) == pytest.approx(1.0)
    assert max(m["async/staleness_max"] for m in metrics) >= 1  # it really ran ahead of the learner


def test_async_run_retrieves_from_the_second_iteration_with_library_staleness_bounded(ray_local, small_model_dir,
                                                                                     tmp_path):
    """eta = 2 used to admit three batches at once against the empty library of the start: nothing was ever
    retrieved. With the library staleness bound (0), every batch after the first reads a non-empty tag."""
    from skill1.algo.admission import library_fresh

    _, metrics = _train(small_model_dir, tmp_path, "libfresh", "rollout.mode=async", "rollout.max_staleness=2",
                        "algorithm.iterations=4", "rollout.max_library_staleness=0")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[0]["select/retrieval_rate"] == 0  # iteration 1 reads the empty library
    for m in metrics[1:]:
        assert m["select/retrieval_rate"] >= 0.9 and m["select/with_candidates"] > 0
        assert m["async/library_staleness_max"] == 0
    # the scripted policy writes one skill: it was retrieved, used and its utility moved off its start
    assert metrics[-1]["library/skills_updated"] >= 1 and metrics[-1]["library/size"] >= 1
    # the rule itself: a group may start while fewer than (L + 1) * B groups wait for a batch
    assert library_fresh(0, 2, 0) and library_fresh(1, 2, 0) and not library_fresh(2, 2, 0)
    assert library_fresh(5, 2, 2) and not library_fresh(6, 2, 2)


def test_without_the_library_bound_early_batches_are_admitted_against_the_empty_library(ray_local,
                                                                                      small_model_dir, tmp_path):
    _, metrics = _train(small_model_dir, tmp_path, "libstale", "rollout.mode=async", "rollout.max_staleness=2",
                        "algorithm.iterations=3", "rollout.max_library_staleness=2")
    # all three batches fit the policy-staleness capacity at once: none of them saw a skill (the old failure)
    assert [m["select/retrieval_rate"] for m in metrics] == [0, 0, 0]
    assert max(m["async/library_staleness_max"] for m in metrics) >= 1
