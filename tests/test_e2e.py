"""End to end on local Ray: train → policy changed, samplers got it, library tagged, metrics written;
evaluate the checkpoint; a garbage-emitting policy does not crash the run; config errors stop early."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CPU_OVERRIDES, record_weight_syncs

from skill1.config import ModelConfig, Skill1Config, load_config
from skill1.envs.builtin import FAMILIES
from skill1.models.tiny import load_policy
from skill1.settings import episode_settings
from skill1.tiny_policy.provision import ensure_policy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

FAST = ["eval_at_ends=false", "eval_every=0", "env.max_steps=4", "rollout.max_new_tokens_act=24", "rollout.max_new_tokens_distill=40",
        "rollout.max_new_tokens_query=16", "algorithm.tasks_per_iteration=2", "algorithm.group_size=4",
        "logging.progress=false", "env.eval_tasks=6",
        # the barely warm model never wins in 4 steps: its invalid actions (penalised) are the learning signal
        "rollout.constrain_actions=false"]


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory) -> str:
    """The quickstart's model recipe, narrower and shorter: warm-started enough for parseable, varied output
    (30 s; a random model writes nothing parseable, and every advantage is 0)."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    return ensure_policy(ModelConfig(path=str(path), hidden_size=64, num_layers=2, warm_start_steps=300,
                                     warm_start_tasks=300), episode_settings(Skill1Config(), training=True))


def _params(path: str) -> dict[str, torch.Tensor]:
    model, _ = load_policy(path)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def weight_syncs() -> list:
    """(version, learner digest, sampler digests), read right after each weight sync of `trained`'s run."""
    return []


@pytest.fixture(scope="module")
def trained(warm_model, tmp_path_factory, local_ray, weight_syncs):
    from skill1.loop.train import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(ROOT / "pipelines/configs/quickstart.yaml",
                      [f"output_dir={out}", "name=e2e", f"model.path={warm_model}", "algorithm.iterations=2", *FAST])
    with pytest.MonkeyPatch.context() as mp:
        record_weight_syncs(mp, weight_syncs)
        return cfg, train(cfg)


def _digest(path: str) -> str:
    from skill1.weights.wire import digest, flat_weights

    return digest(flat_weights(load_policy(path)[0]))


def test_train_changes_policy_and_syncs_samplers(warm_model, trained, weight_syncs):
    cfg, result = trained
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    # every sampler reported the version the learner produced, each iteration
    assert [m["policy/version"] for m in lines] == [1.0, 2.0] == [m["learner/version"] for m in lines]
    assert all(m["learner/tokens"] > 0 and m["rollout/episodes"] == 8 for m in lines)
    assert all(m["act/advantage_abs"] > 0 for m in lines)  # a real learning signal, not an all-zero batch
    before, after = _params(warm_model), _params(str(result.checkpoint))
    assert any(not torch.equal(before[n], after[n]) for n in before), "no parameter moved"
    # and each sampler holds the learner's weights bit for bit after each sync, not only its version number
    assert cfg.rollout.backend == "hf" and [v for v, _, _ in weight_syncs] == [1, 2]
    for _, learner, samplers in weight_syncs:
        assert samplers == [learner] * cfg.rollout.num_samplers
    learned = [learner for _, learner, _ in weight_syncs]
    assert _digest(warm_model) not in learned  # trained weights: a sampler left at the start would differ
    assert learned[-1] == _digest(str(result.checkpoint))  # the learner's digest, checked independently


def test_library_has_a_tag_per_iteration(trained):
    from skill1.library import Encoder, SkillLibrary

    cfg, result = trained
    enc = Encoder(cfg.library.encoder)
    lib = SkillLibrary.open(str(result.library_path), enc.name, enc.dim)
    tags = lib.tags()
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    # each tag pins the version the iteration ended at (equal versions when an iteration wrote nothing)
    assert tags == {f"iter-{m['step']}": int(m["library/version"]) for m in lines}
    assert result.library_tags == tags
    for name, version in tags.items():
        assert lib.checkout(name).version == version


def test_metrics_reach_wandb_offline(trained):
    _, result = trained
    run_dirs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    history = list(run_dirs[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
    required = {"rollout/reward", "rollout/success", "library/size", "time/iteration_s", "learner/kl",
                "act/valid_rate", "select/advantage", "distill/advantage"}
    assert required <= set(json.loads(result.metrics_path.read_text().splitlines()[-1]))


def test_eval_reports_success_per_family(trained):
    from skill1.evaluate import evaluate

    cfg, result = trained
    report = evaluate(cfg)
    assert report["episodes"] == 6 and set(report["success_by_family"]) <= set(FAMILIES)
    assert len(report["success_by_family"]) == 6  # 6 eval tasks, families round-robin
    # one episode per family: each rate is that episode's success, and the overall rate is their mean
    assert report["episodes_by_family"] == {f: 1 for f in report["success_by_family"]}
    assert set(report["success_by_family"].values()) <= {0.0, 1.0}
    assert report["success"] == pytest.approx(sum(report["success_by_family"].values()) / 6)
    assert json.loads((result.run_dir / "eval.json").read_text())["checkpoint"] == str(result.checkpoint)
    from skill1.evaluate import eval_metrics

    m = eval_metrics(report)
    assert m["eval/success"] == report["success"] and len([k for k in m if k.startswith("eval/success/")]) == 6


def test_constrained_evaluation_acts_only_admissibly_through_the_actors(trained):
    """The admissible actions travel with each acting prompt through the rollout worker and the sampler actor:
    the weak policy that writes invalid actions on its own writes none under the mask."""
    from skill1.evaluate import eval_metrics, evaluate

    cfg, _ = trained
    free = eval_metrics(evaluate(cfg))["eval/valid_action_rate"]
    masked = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, constrain_actions=True))
    assert free < 1.0 and eval_metrics(evaluate(masked))["eval/valid_action_rate"] == 1.0


def test_garbage_emitting_policy_does_not_crash_the_run(small_model_dir, tmp_path, local_ray):
    """A random model writes no parseable output: every action invalid, no skill — the run completes."""
    from skill1.loop.train import train

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=garbage", f"model.path={small_model_dir}",
                             "algorithm.iterations=1", "learner.backend=torch", *FAST])
    result = train(cfg)
    m = result.final_metrics
    assert m["act/valid_rate"] == 0.0 and m["act/invalid_actions"] == 4.0
    assert m["rollout/reward"] == 0.0 and m["library/size"] == 0.0
    assert m["distill/valid_rate"] == 0.0 and result.checkpoint.is_dir()


def test_bad_config_fails_in_one_line_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "skill1.cli", "train", f"output_dir={tmp_path}", "learner.lr=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: learner.lr: must be > 0, got -1.0"
    assert not any(tmp_path.iterdir())  # no run dir, no Ray, no model


@pytest.mark.parametrize("env", ["alfworld", "webshop"])
def test_missing_benchmark_data_fails_in_one_line_before_anything_starts(tmp_path, env, monkeypatch, capsys):
    from skill1.cli import main

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.delenv("WEBSHOP_DATA", raising=False)
    capsys.readouterr()
    # in-process (an interpreter start saved): the bad-config test above is the fresh-interpreter one
    rc = main(["train", f"output_dir={tmp_path / 'runs'}", f"env.name={env}", f"env.data_path={tmp_path / 'nothing-here'}"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing-here" in lines[0], lines
    assert not (tmp_path / "runs").exists()  # no run dir, no Ray, no model


def test_analysis_notebook_runs_on_the_trained_run(trained, monkeypatch, capsys):
    """Execute the notebook's code cells (as a kernel would, in order) against the run above."""
    _, result = trained
    # as Jupyter runs it: from notebooks/, with a path relative to the repository root
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.setenv("SKILL1_RUN", os.path.relpath(result.run_dir, ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = json.loads((ROOT / "notebooks/run_analysis.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), namespace)  # noqa: S102 - our own notebook
    assert [row[0] for row in namespace["evolution"]] == ["iter-1", "iter-2"]
    out = capsys.readouterr().out
    assert "iter-2" in out and "reward" in out and "0 held-out evaluations" in out  # this run evaluates none
    assert "act valid" in out and "distill valid" in out and out.count("valid_rate") == 0  # headed by stage


def test_train_and_eval_on_the_webshop_fixture_with_its_conventions(small_model_dir, tmp_path, local_ray):
    """The real pipeline on WebShop's format-true fixture: score reward, penalty 0.5, eval on goals[:eval_size].
    The scripted sampler answers in WebShop's action grammar (`search[...]`, `click[...]`) where a tiny policy
    warm-started on the built-in env would not: the env's side is what this checks."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "webshop"))
    from make_fixture import write_fixture

    from skill1.evaluate import evaluate
    from skill1.loop.train import train

    shop = write_fixture(tmp_path / "webshop")
    cfg = load_config(ROOT / "pipelines/configs/webshop_qwen2.5_7b.yaml", [
        f"output_dir={tmp_path / 'runs'}", f"model.path={small_model_dir}", "model.dtype=float32",
        f"env.data_path={shop}", "env.task_options.eval_size=4", "env.task_options.validation_size=8",
        *CPU_OVERRIDES, "rollout.backend=scripted", "env.num_pools=1", "env.num_cpus_per_pool=0.25", "env.memory_per_pool_mb=0",
        "algorithm.iterations=1",
        "save_every=0", "learner.lr=1e-4", "logging.wandb_mode=disabled", *FAST, "env.max_steps=2",
        "algorithm.group_size=2", "env.eval_tasks=4", "rollout.max_new_tokens_rerank=8"])
    assert cfg.env.invalid_action_penalty == 0.5
    result = train(cfg)
    m = result.final_metrics
    # two steps cannot reach a purchase (search, open a product, buy), the only step that scores in WebShop
    assert m["env/failed_episodes"] == 0.0 and m["rollout/reward"] == 0.0 == m["rollout/success"]
    families = {k.rsplit("/", 1)[1] for k in m if k.startswith("rollout/success/")}
    assert families and families <= {"beauty", "electronics", "fashion", "food", "garden"}
    report = evaluate(cfg)
    assert report["split"] == "eval" and report["episodes"] == 4 and report["env_failed_episodes"] == 0
