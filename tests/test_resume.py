"""Crash and resume, as a user meets them: `skill1 train` killed with -9 or stopped with SIGTERM mid-run, then
`skill1 train --resume <run dir>`. No episode is trained twice, the library goes back to the checkpoint's tag,
metrics continue, and a resumed synchronous run ends where an uninterrupted one does, bit for bit. Plus: a
sampler actor killed mid-iteration is restarted, rejoins with the current weights, and the run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import record_weight_syncs
from ray_auth import token_env

from skill1.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BASE = ["eval_at_ends=false", "eval_every=0", "rollout.backend=scripted", "algorithm.tasks_per_iteration=2", "algorithm.group_size=2", "env.max_steps=3",
        "logging.progress=false", "logging.wandb_mode=offline", "learner.lr=1e-3",
        "rollout.max_new_tokens_act=32", "rollout.max_new_tokens_distill=32",
        # the scripted policy never wins: its deliberate invalid actions (penalised) are the learning signal
        "rollout.constrain_actions=false"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "skill1.cli", "train", *args]


def _env() -> dict:
    env = {**token_env(), "HF_HUB_OFFLINE": "1"}  # the local Ray of `skill1 train` keeps token auth on
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):  # left by in-process learners
        env.pop(key, None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # own session: whatever the killed driver leaves behind (its local Ray) is cleaned up as a group
    return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(args: list[str], log: Path, timeout: float = 600) -> int:
    p = _start(args, log)
    try:
        return p.wait(timeout)
    finally:
        _reap(p)


def _reap(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(cond, p: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if p.poll() is not None:
            raise AssertionError(f"run ended early ({p.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _library_rows(run: Path, ref=None) -> list:
    from skill1.library import Encoder, SkillLibrary

    enc = Encoder("all-MiniLM-L6-v2")
    lib = SkillLibrary.open(str(run / "library"), enc.name, enc.dim)
    view = lib if ref is None else lib.checkout(ref)
    return sorted((s.id, s.scenario, s.strategy, round(s.utility, 9), s.uses, s.status)
                  for s in view.all_skills(active_only=False))


def _weights(path: Path) -> dict:
    from skill1.models.tiny import load_policy

    model, _ = load_policy(str(path))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


_SCHEDULE = ("time/", "async/", "rollout/generate_calls", "env/calls", "learner/update_s", "learner/tokens_per_s", "learner/proximal_s", "learner/peak_",
             "library/version", "library/versions_compacted")


def test_kill9_mid_run_then_resume_trains_every_episode_once_and_ends_like_an_unbroken_run(small_model_dir,
                                                                                           tmp_path, monkeypatch,
                                                                                           local_ray):
    common = ["--config", "pipelines/configs/quickstart.yaml", f"output_dir={tmp_path}", f"model.path={small_model_dir}",
              "rollout.mode=sync", "learner.backend=deepspeed", "algorithm.iterations=4", "save_every=2",
              "rollout.scripted_latency_s=0.05", *BASE]  # latency: iteration 4 is still running at the kill
    run = tmp_path / "crash"
    p = _start(_cli(*common, "name=crash"), tmp_path / "crash.log")
    try:
        # iteration 3 is trained and its library written (tag iter-3), the last checkpoint is iter-2: kill -9 now
        _wait_for(lambda: len(_lines(run / "trained.jsonl")) >= 3, p, tmp_path / "crash.log")
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        _reap(p)
    assert (run / "checkpoints" / "latest").read_text() == "iter-2"
    assert "iter-3" in json.loads(json.dumps(_tags(run)))
    at_tag = _library_rows(run, "iter-2")

    # resume to the end in this process, reading every weight sync: before the resume's first one the run dir is
    # back at the checkpoint (library rolled back to its tag, later tags and lines dropped), and right after it
    # each sampler holds the checkpoint's policy (the scripted sampler generates without weights: its digest is
    # what shows that a resumed sampler would generate from the resumed policy)
    from skill1.cli import build_parser, train_config
    from skill1.loop.train import train

    checkpointed = _digest(run / "checkpoints" / "iter-2" / "policy")
    syncs: list = []
    rolled_back: dict = {}

    def before_sync(fleet, version: int) -> None:
        if version == 2:
            rolled_back.update(rows=_library_rows(run), tags=set(_tags(run)),
                               steps=[m["step"] for m in _lines(run / "metrics.jsonl")],
                               trained=[t["iteration"] for t in _lines(run / "trained.jsonl")])

    record_weight_syncs(monkeypatch, syncs, before=before_sync)
    cfg, mode = train_config(build_parser().parse_args(["train", "--resume", str(run), "logging.wandb_mode=disabled"]))
    assert mode is True and train(cfg, resume=True).stopped_at is None
    assert rolled_back == {"rows": at_tag, "tags": {"iter-1", "iter-2"}, "steps": [1, 2], "trained": [1, 2]}
    assert [v for v, _, _ in syncs] == [2, 3, 4] and syncs[0][1] == checkpointed
    for _, learner, samplers in syncs:
        assert samplers == [learner] * cfg.rollout.num_samplers
    ledger = _lines(run / "trained.jsonl")
    assert [t["iteration"] for t in ledger] == [1, 2, 3, 4]
    ids = [e for t in ledger for e in t["episodes"]]
    assert len(ids) == len(set(ids)) == 4 * 2 * 2  # every episode once, none twice, none lost
    assert sorted(g for t in ledger for g in t["groups"]) == list(range(8))
    metrics = _lines(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    state = json.loads((run / "checkpoints" / "iter-4" / "state.json").read_text())
    assert sorted(state["consumed_episodes"]) == sorted(ids)

    # the same run, never interrupted (in this process too: the command line's path is the crashed run's),
    # ends in the same place: weights, library, and every algorithmic metric
    ref = tmp_path / "ref"
    ref_cfg, _ = train_config(build_parser().parse_args(["train", *common, "name=ref", "logging.wandb_mode=disabled"]))
    assert train(ref_cfg).stopped_at is None
    a, b = _weights(run / "checkpoints" / "final"), _weights(ref / "checkpoints" / "final")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert [r[1:] for r in _library_rows(run)] == [r[1:] for r in _library_rows(ref)]
    for x, y in zip(metrics, _lines(ref / "metrics.jsonl")):
        assert {k: v for k, v in x.items() if not k.startswith(_SCHEDULE)} == \
               {k: v for k, v in y.items() if not k.startswith(_SCHEDULE)}
    # every metric lives in a stage namespace
    from skill1.metrics import NAMESPACES

    assert {k.split("/")[0] for m in metrics for k in m if k != "step"} <= set(NAMESPACES)


def _digest(policy_dir: Path) -> str:
    from skill1.models.tiny import load_policy
    from skill1.weights.wire import digest, flat_weights

    return digest(flat_weights(load_policy(str(policy_dir))[0]))


def _tags(run: Path) -> dict:
    from skill1.library import Encoder, SkillLibrary

    enc = Encoder("all-MiniLM-L6-v2")
    return SkillLibrary.open(str(run / "library"), enc.name, enc.dim).tags()


def test_sigterm_checkpoints_an_async_run_which_resumes_without_losing_or_repeating_rollouts(small_model_dir,
                                                                                             tmp_path):
    run = tmp_path / "async"
    args = _cli("--config", "pipelines/configs/quickstart.yaml", f"output_dir={tmp_path}", "name=async",
                f"model.path={small_model_dir}", "rollout.mode=async", "rollout.max_staleness=2",
                "learner.backend=torch", "algorithm.iterations=4", "save_every=0", "rollout.scripted_latency_s=0.05",
                *BASE)
    p = _start(args, tmp_path / "async.log")
    try:
        _wait_for(lambda: len(_lines(run / "trained.jsonl")) >= 1, p, tmp_path / "async.log")
        os.kill(p.pid, signal.SIGTERM)
        rc = p.wait(300)
    finally:
        _reap(p)
    log = (tmp_path / "async.log").read_text()
    assert rc == 143, log[-3000:]
    assert "Continue it:  skill1 train --resume" in log
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text() / "state.json").read_text())
    assert state["reason"] == "sigterm" and 1 <= state["iteration"] < 4
    assert state["library_tag"] == f"iter-{state['iteration']}"
    stopped_at = state["iteration"]

    rc = _run(_cli("--resume", str(run)), tmp_path / "resume.log")
    assert rc == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert f"resumed {run} at iteration {stopped_at}" in (tmp_path / "resume.log").read_text()
    ledger = _lines(run / "trained.jsonl")
    assert [t["iteration"] for t in ledger] == [1, 2, 3, 4]
    groups = [g for t in ledger for g in t["groups"]]
    ids = [e for t in ledger for e in t["episodes"]]
    assert len(groups) == len(set(groups)) == 8 and len(ids) == len(set(ids)) == 16
    assert [m["step"] for m in _lines(run / "metrics.jsonl")] == [1, 2, 3, 4]
    # the groups that had finished or were running at the SIGTERM were trained after the resume, not lost:
    # admission never ran far past what was trained, so the group numbers stay dense
    assert max(groups) < 8 + 2 * 2 * 2


def test_a_sampler_killed_mid_iteration_is_restarted_and_the_run_completes(local_ray, small_model_dir, tmp_path,
                                                                            monkeypatch):
    """Killed in iteration 2, when a weights packet exists: the restarted sampler rejoins holding it (checked
    before the next sync overwrites it), and every sync leaves each sampler with the learner's weights."""
    import ray

    from skill1.loop.train import train

    cfg = load_config(ROOT / "pipelines/configs/quickstart.yaml", [
        f"output_dir={tmp_path}", "name=killsampler", f"model.path={small_model_dir}", "rollout.mode=sync",
        "learner.backend=torch", "rollout.num_samplers=2", "rollout.num_cpus_per_sampler=0",
        "rollout.scripted_latency_s=0.2", "algorithm.iterations=2", "save_every=0", *BASE,
        "logging.wandb_mode=disabled"])
    syncs, killed, seen = [], {}, {}

    def before_sync(fleet, version: int) -> None:
        if version == 1:  # iteration 1's rollout is over: how many calls one rollout makes
            seen["calls"] = ray.get(fleet.worker.stats.remote()).generate_calls
            return
        # iteration 2's rollout is over; sampler 1 died in it. Once back it asks for nothing: the worker's
        # rejoin must have loaded the newest packet (v1) into it, which the sync below would overwrite
        deadline = time.monotonic() + 120

        def version():  # the rollout can end on sampler 0 alone while Ray is still restarting sampler 1
            try:
                return ray.get(fleet.samplers[1].version.remote())
            except ray.exceptions.ActorUnavailableError:
                return None

        while version() != 1:
            assert time.monotonic() < deadline, "the restarted sampler never rejoined with the v1 weights"
            time.sleep(0.2)
        seen["rejoined"] = fleet.weights_digests()[1]

    record_weight_syncs(monkeypatch, syncs, before=before_sync)

    def killer():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not syncs:  # until the v1 weights are out: into iteration 2
            time.sleep(0.05)
        sampler = ray.get_actor("killsampler:sampler-1")
        pid = ray.get(sampler.__ray_call__.remote(lambda self: os.getpid()))
        worker = ray.get_actor("killsampler:rollout-worker")
        # iteration 2's rollout started (its counters begin again) and is under way
        while not 2 <= ray.get(worker.stats.remote()).generate_calls < seen["calls"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # both samplers are now answering a call nearly all the time (0.2 s each, re-sent at once)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = train(cfg)
    t.join(5)
    assert killed, "the sampler was never killed"
    metrics = _lines(result.metrics_path)
    assert [m["step"] for m in metrics] == [1, 2]
    assert [m["rollout/sampler_restarts"] for m in metrics] == [0, 1]
    assert metrics[1]["rollout/regenerated"] >= 1  # its in-flight generations were asked again
    assert all(m["env/failed_episodes"] == 0 and m["rollout/episodes"] == 4 for m in metrics)
    assert [m["policy/version"] for m in metrics] == [1.0, 2.0]
    # the weights, not only the version numbers: after each sync every sampler holds the learner's, and the
    # restarted one held v1's after rejoining, before the v2 sync
    assert [v for v, _, _ in syncs] == [1, 2]
    for _, learner, samplers in syncs:
        assert samplers == [learner] * 2
    assert seen["rejoined"] == [syncs[0][1]] * 2 and syncs[0][1] != syncs[1][1]


def test_the_command_line_does_not_join_an_inherited_wandb_service(monkeypatch, tmp_path):
    """A parent's WANDB_SERVICE (a notebook, a sweep agent) outlives a killed run: a stream registered there
    stays registered and the resume is refused ('run ID is in use'). `skill1` drops it before anything runs."""
    from skill1.cli import main

    monkeypatch.setenv("WANDB_SERVICE", "a-parent's-service")
    assert main(["train", f"output_dir={tmp_path}", "learner.lr=-1"]) == 2  # stops at the config, after the drop
    assert "WANDB_SERVICE" not in os.environ
