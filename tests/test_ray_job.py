"""The way users launch: a real Ray head (`ray start --head` on 127.0.0.1 with the dashboard), `cluster/submit.sh`
submits a 1-iteration training job, the job is polled to SUCCEEDED and its logs read, the run's gauges show up in
the head's Prometheus metrics (the dashboard's Metrics view), the dashboard listens on loopback only; the head is
stopped. The head is this test's own: it is stopped by killing exactly its processes (`ray stop` would also stop
the test session's local Ray)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

from ray_auth import bearer, token_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def _stop_head(temp_dir: str) -> None:
    """Kill the processes of the head started with `temp_dir` (GCS, raylet, dashboard, ...) and every process
    under them: the agents retitle themselves (`ray::DashboardAgent`), so matching the command line missed
    them, and a leaked agent kept its port: the next head's job API answered "No available agent" (402 s)."""
    mine = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in arg for arg in p.info["cmdline"] or []):
                mine.update({q.pid: q for q in (p, *p.children(recursive=True))})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    mine = list(mine.values())
    for p in mine:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=30)


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash, metrics, gcs, agent, agent_grpc, env_agent = (_free_port() for _ in range(6))
    # token auth on, as README and cluster/README.md tell users to start a head
    env = {**token_env(temp_dir), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_metrics_report_interval_ms": "1000"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--metrics-export-port={metrics}",
                    # the agents' ports too: their defaults are fixed, and a second head on the machine (another
                    # test, a user's) would find them taken
                    f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--runtime-env-agent-port={env_agent}",
                    "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield {"address": f"http://127.0.0.1:{dash}", "dashboard_port": dash, "metrics_port": metrics, "env": env}
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(env: dict, model: str, out_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "cluster/submit.sh", "--config", "pipelines/configs/quickstart.yaml", f"output_dir={out_dir}",
         "name=job", f"model.path={model}", "rollout.backend=scripted", "learner.backend=torch",
         "algorithm.iterations=1", "algorithm.tasks_per_iteration=2", "algorithm.group_size=2", "env.max_steps=3",
         "logging.progress=false", "logging.wandb_mode=offline", "eval_at_ends=false", "eval_every=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_ray_job_submit_trains_on_a_real_head(ray_head, small_model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    # the dashboard (= the job API) listens on loopback only
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_head["dashboard_port"]}
    assert listening == {"127.0.0.1"}, listening
    # ... and, token auth being on, answers nobody without the token (RAY_AUTH_MODE=disabled: 200, any local user)
    for headers, code in (({}, 401), ({"Authorization": "Bearer " + "0" * 64}, 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{ray_head['address']}/api/jobs/", headers=headers),
                                   timeout=10)
        assert refused.value.code == code

    sid = f"skill1-test-{uuid.uuid4().hex[:8]}"
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "SKILL1_SUBMIT_FLAGS": f"--no-wait --submission-id {sid}"}
    for _ in range(30):  # a fresh head answers "No available agent" for a few seconds
        out = _submit(env, small_model_dir, tmp_path)
        if "No available agent" not in out.stderr + out.stdout:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout + out.stderr

    client = JobSubmissionClient(ray_head["address"], headers=bearer(ray_head["env"]))
    gauges, deadline = "", time.monotonic() + 600
    while not (status := client.get_job_status(sid)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(sid)[-3000:]
        text = _scrape(ray_head["metrics_port"])
        if "ray_skill1_rollout_reward" in text:
            gauges = text
        time.sleep(1)
    logs = client.get_job_logs(sid)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "iter 1: reward" in logs and "Run finished" in logs
    assert (tmp_path / "job" / "checkpoints" / "final" / "config.json").is_file()
    assert (tmp_path / "job" / "checkpoints" / "iter-1" / "state.json").is_file()  # resumable after the last one

    # the per-iteration metrics reached Ray's metrics agent (what the dashboard charts), tagged with the run
    for _ in range(20):  # a job shorter than the report interval: its last report lands after it ends
        if "ray_skill1_rollout_reward" in gauges:
            break
        time.sleep(1)
        gauges = _scrape(ray_head["metrics_port"])
    lines = [line for line in gauges.splitlines() if line.startswith("ray_skill1_")]
    names = {line.split("{")[0] for line in lines}
    assert {"ray_skill1_rollout_reward", "ray_skill1_rollout_success", "ray_skill1_library_size",
            "ray_skill1_time_sync_s", "ray_skill1_time_episodes_per_s", "ray_skill1_iteration"} <= names, names
    assert all('run="job"' in line for line in lines)
    # actors carry readable names in the dashboard
    # the state API takes its token from the environment only: ask it as a user would, from a shell with the token
    names = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.util.state import list_actors; "
         "print('\\n'.join(a.name for a in list_actors(address=sys.argv[1], limit=1000) if a.name))",
         ray_head["address"]], env=ray_head["env"], capture_output=True, text=True, timeout=120)
    actors = set(names.stdout.split())
    assert {"job:sampler-0", "job:learner-0", "job:rollout-worker", "job:env-pool-0"} <= actors, actors


def test_a_tune_search_runs_as_a_ray_job_each_trial_in_its_own_run_dir(ray_head, small_model_dir, tmp_path):
    """`pipelines/tune.py` submitted unchanged (cluster/submit.sh, SKILL1_ENTRYPOINT): 2 trials x 2 iterations
    with different `lr` complete, each with its own run dir (config, metrics, library), checkpoint and wandb run."""
    import json

    from ray.job_submission import JobStatus, JobSubmissionClient

    from skill1.config import load_config

    sid = f"skill1-tune-{uuid.uuid4().hex[:8]}"
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"], "SKILL1_ENTRYPOINT": "pipelines/tune.py",
           "SKILL1_SUBMIT_FLAGS": f"--no-wait --submission-id {sid}"}
    args = ["--samples", "1", "--eval-every", "1", "--storage", str(tmp_path / "tune"), "--name", "search",
            "--search", "learner.lr=grid:0.001,0.0001", "--config", "pipelines/configs/quickstart.yaml",
            f"output_dir={tmp_path}", f"model.path={small_model_dir}", "rollout.backend=scripted",
            "learner.backend=torch", "algorithm.iterations=2", "algorithm.tasks_per_iteration=2",
            "algorithm.group_size=2", "env.max_steps=3", "env.eval_tasks=2", "logging.progress=false",
            "rollout.constrain_actions=false"]
    for _ in range(30):  # a fresh head answers "No available agent" for a few seconds
        out = subprocess.run(["bash", "cluster/submit.sh", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        if "No available agent" not in out.stderr + out.stdout:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout + out.stderr
    client = JobSubmissionClient(ray_head["address"], headers=bearer(ray_head["env"]))
    deadline = time.monotonic() + 600
    while not (status := client.get_job_status(sid)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(sid)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(sid)
    assert status == JobStatus.SUCCEEDED and "best trial:" in logs, logs[-3000:]
    trials = sorted((tmp_path / "tune" / "search").glob("Skill1_*"))
    assert len(trials) == 2
    lrs = set()
    for trial in trials:
        [run] = trial.glob("run-*/")  # the trial's own run dir
        lrs.add(load_config(run / "config.yaml", []).learner.lr)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines if "rollout/reward" in m] == [1, 2]
        assert [m["step"] for m in lines if "eval/success" in m] == [1, 2]  # ASHA's metric, every iteration
        assert (run / "library").is_dir() and list((run / "wandb").glob("offline-run-*"))
        [ckpt] = trial.glob("checkpoint_*")
        pointer = json.loads((ckpt / "skill1_checkpoint.json").read_text())
        assert Path(pointer["run_dir"]) == run.resolve() and Path(pointer["checkpoint"], "state.json").is_file()
    assert lrs == {0.001, 0.0001}

