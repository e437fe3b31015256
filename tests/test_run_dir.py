"""A run directory is data, and Skill1 deletes only what it made (issue 14, points 1-3 without Ray):
names that would reach outside output_dir, overwrite of a directory that is not a run, a model dir that is
not ours, two processes on one directory, pickles and code-running payloads in a run dir, damaged files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from skill1.agent.prompts import PROMPT_VERSION
from skill1.checkpoint import (CheckpointError, TrainState, latest_checkpoint, load_checkpoint, publish_dir, read_jsonl,
                               truncate_jsonl, write_checkpoint)
from skill1.config import ConfigError, ModelConfig, load_config, save_config
from skill1.run_dir import RUN_MARKER, DirLock, OwnershipError, fresh_run_dir, is_run_dir

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs `touch <path>`: what a crafted file in a received run dir would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _state(it: int, **kw) -> TrainState:
    base = dict(iteration=it, policy_version=it, library_tag=f"iter-{it}", library_version=it, next_seq=2 * it,
                running_seqs=[], trained_groups=list(range(2 * it)), consumed_episodes=[], reference_model="/m",
                wandb_run_id=None, prompt_version="v4")
    return TrainState(**{**base, **kw})


def _learner(ranks: int = 1):
    def save(policy_dir: str, learner_dir: str) -> None:
        os.makedirs(policy_dir)
        os.makedirs(learner_dir)
        Path(policy_dir, "config.json").write_text("{}")
        for r in range(ranks):
            torch.save({"python": None, "torch": torch.get_rng_state(), "cuda": None}, Path(learner_dir, f"rng-rank{r}.pt"))
    return save


# ---- names and overwrite ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", ""])
def test_a_run_name_is_one_plain_path_component(name):
    with pytest.raises(ConfigError, match="^name: "):
        load_config(None, [f"name={name}"])


def test_overwrite_replaces_only_a_skill1_run_and_leaves_other_dirs_alone(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(OwnershipError, match="already holds a run"):
        fresh_run_dir(user, overwrite=False)
    with pytest.raises(OwnershipError, match="not a Skill1 run directory"):
        fresh_run_dir(user, overwrite=True)
    assert (user / "thesis.tex").read_text() == "years of work"
    run = fresh_run_dir(tmp_path / "run", overwrite=False)  # absent: made and marked
    assert is_run_dir(run)
    (run / "metrics.jsonl").write_text("{}\n")
    fresh_run_dir(run, overwrite=True)  # ours: replaced
    assert not (run / "metrics.jsonl").exists() and (run / RUN_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_run_dir(fresh_run_dir(empty, overwrite=False))


def _skill1(capsys, *argv: str) -> tuple[int, str]:
    """`skill1 ...` in this process (the command line's own `main`): its exit code and what it wrote to stderr.
    In-process saves an interpreter start per test; that a failing command prints one line and nothing else, even
    from imports, is checked in a fresh interpreter by test_e2e's bad-config test."""
    from skill1.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_the_quickstart_settings_with_name_dotdot_delete_nothing(tmp_path, monkeypatch, capsys):
    """`name=..` with overwrite=true used to rmtree output_dir/.. — the working directory."""
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    rc, err = _skill1(capsys, "train", "--config", str(ROOT / "pipelines/configs/quickstart.yaml"), "output_dir=runs",
                      "name=..", "overwrite=true")
    assert rc == 2 and err.count("\n") == 1 and "plain directory name" in err
    assert (work / "keep.txt").is_file()


# ---- the tiny model's directory ----------------------------------------------------------------------------

def _settings():
    from skill1.config import Skill1Config
    from skill1.settings import episode_settings

    return episode_settings(Skill1Config(), training=True)


def test_the_tiny_model_is_never_built_over_a_directory_it_did_not_make(tmp_path):
    from skill1.tiny_policy.provision import ensure_policy

    models = tmp_path / "models"
    (models / "qwen").mkdir(parents=True)
    (models / "qwen" / "model.safetensors").write_text("weights")
    with pytest.raises(OwnershipError, match="not a tiny model Skill1 built"):  # a folder of models
        ensure_policy(ModelConfig(path=str(models)), _settings())
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")  # a user's model: even init-tiny (force) leaves it
    with pytest.raises(OwnershipError):
        ensure_policy(ModelConfig(path=str(real)), _settings(), force=True)
    assert (models / "qwen" / "model.safetensors").is_file() and (real / "config.json").is_file()


def test_init_tiny_out_dotdot_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "precious").write_text("x")
    monkeypatch.chdir(work)
    rc, err = _skill1(capsys, "model", "init-tiny", "--out", "..")
    assert rc == 2 and err.count("\n") == 1 and "refusing to replace" in err
    assert (tmp_path / "a" / "precious").is_file()


def test_init_tiny_keeps_an_existing_model_unless_forced(tmp_path, capsys):
    built = tmp_path / "tiny"
    built.mkdir()
    (built / "config.json").write_text("{}")
    (built / "skill1_provenance.json").write_text(json.dumps({"warm_start_steps": 1600}))
    rc, err = _skill1(capsys, "model", "init-tiny", "--out", str(built), "--warm-start-steps", "0")
    assert rc == 2 and err.count("\n") == 1 and "--force" in err
    assert json.loads((built / "skill1_provenance.json").read_text()) == {"warm_start_steps": 1600}


def test_a_model_built_with_another_recipe_is_used_as_built_and_said_so(tmp_path, capsys):
    from skill1.tiny_policy.provision import ensure_policy

    built = tmp_path / "tiny"
    built.mkdir()
    (built / "config.json").write_text("{}")
    (built / "skill1_provenance.json").write_text(json.dumps({"warm_start_steps": 1600, "hidden_size": 128}))
    assert ensure_policy(ModelConfig(path=str(built), warm_start_steps=0, hidden_size=128), _settings()) == str(built)
    err = capsys.readouterr().err
    assert "model.warm_start_steps=1600 (this config: 0)" in err and "--force" in err and "hidden_size" not in err
    ensure_policy(ModelConfig(path=str(built), warm_start_steps=1600, hidden_size=128), _settings())
    assert capsys.readouterr().err == ""  # the same recipe: nothing to say


def test_a_crashed_builds_debris_is_cleared_by_the_next_build(tmp_path, monkeypatch):
    import skill1.tiny_policy.provision as provision

    debris = tmp_path / ".tiny.tmp-424242"
    debris.mkdir()

    class Stop(Exception):
        pass

    def boom(*a, **k):
        raise Stop

    monkeypatch.setattr(provision, "build_tokenizer", boom)  # stop right after the cleanup
    with pytest.raises(Stop):
        provision.ensure_policy(ModelConfig(path=str(tmp_path / "tiny")), _settings())
    assert not debris.exists()


# ---- one process per directory ------------------------------------------------------------------------------

def test_a_second_process_on_a_locked_directory_gets_one_line_with_the_holders_pid(tmp_path):
    target = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from skill1.run_dir import DirLock
        with DirLock({str(target)!r}, "skill1 train"):
            print("held", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OwnershipError, match=f"in use by another skill1 train \\(pid {holder.pid};"):
            DirLock(target, "skill1 train").acquire()
    finally:
        holder.stdin.close()
        holder.wait(30)
    with DirLock(target, "skill1 train"):  # released when the holder ended
        pass


def test_a_second_train_on_a_running_run_dir_is_refused(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=r", "rollout.backend=scripted"])
    from skill1.loop.train import train

    with DirLock(cfg.run_dir, "skill1 train"):
        with pytest.raises(OwnershipError, match="in use"):
            train(cfg)


# ---- nothing in a run dir executes ---------------------------------------------------------------------------

def test_driver_state_is_json_and_round_trips_rng_and_buffer(tmp_path):
    import random

    import numpy as np

    from skill1.checkpoint import restore_driver_rng
    from skill1.serialization import from_jsonable, to_jsonable
    from skill1.types import Episode, RolloutGroup, Segment, SkillDraft, Stage, Task

    ep = Episode("e1", "g", Task("t", "builtin", "pick_and_place", "put a mug", {"seed": 3}),
                 [Segment(Stage.ACT, [1, 2], [3], [-0.5], "go", valid=False)], [], None, 1.0, True, 2, 1,
                 draft=SkillDraft("s", "t"), parse_errors={"act/inadmissible": 1})
    group = RolloutGroup(4, [ep], behaviour_version=2, library_iteration=1)
    random.seed(7)
    np.random.seed(7)
    path = write_checkpoint(tmp_path, _state(1), [to_jsonable(group)], _learner(), keep=0)
    assert not list(path.glob("*.pkl")) and json.loads((path / "driver.json").read_text())
    a, b = random.random(), np.random.rand()
    ck = load_checkpoint(path)
    restore_driver_rng(ck.driver_rng)
    assert (random.random(), np.random.rand()) == (a, b)
    assert from_jsonable(RolloutGroup, ck.buffer[0]) == group


def test_a_pickled_driver_state_is_never_loaded(tmp_path):
    path = write_checkpoint(tmp_path, _state(1), [], _learner(), keep=0)
    (path / "driver.json").unlink()
    marker = tmp_path / "pwned"
    (path / "driver.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: latest_checkpoint(tmp_path), lambda: load_checkpoint(path)):
        with pytest.raises(CheckpointError, match="pickle, which is never loaded"):
            load()
    assert not marker.exists()


def test_a_crafted_learner_state_is_refused_before_anything_runs(tmp_path):
    from skill1.learner.safe_load import UnsafeCheckpoint, load, scan

    marker = tmp_path / "pwned"
    (tmp_path / "learner").mkdir()
    torch.save({"x": torch.zeros(2)}, tmp_path / "learner" / "rng-rank0.pt")
    assert scan(tmp_path / "learner") == 1
    torch.save({"x": _Payload(marker)}, tmp_path / "learner" / "torch_state.pt")
    with pytest.raises(UnsafeCheckpoint, match="posix.system|os.system"):
        scan(tmp_path / "learner")
    with pytest.raises(UnsafeCheckpoint, match="refused"):
        load(tmp_path / "learner" / "torch_state.pt")
    assert not marker.exists()


def test_a_deepspeed_checkpoint_loads_weights_only(tmp_path):
    """The three plain-data classes DeepSpeed pickles into ZeRO states are allowed, nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from skill1.learner.safe_load import load, scan

    state = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
             "frag": fragment_address(numel=4, start=0), "t": torch.ones(3)}
    torch.save(state, tmp_path / "optim_states.pt")
    assert scan(tmp_path) == 1
    back = load(tmp_path / "optim_states.pt")
    assert back["zero_stage"] == ZeroStageEnum.gradients and back["frag"].numel == 4
    assert torch.equal(back["t"], torch.ones(3))


def test_a_run_configs_sampler_python_is_not_taken_without_the_user(tmp_path):
    from skill1.cli import _run_config

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run"])
    save_config(cfg, run / "config.yaml")
    text = (run / "config.yaml").read_text().replace("sampler_python: null", f"sampler_python: touch {marker};python")
    (run / "config.yaml").write_text(text)
    assert _run_config(str(run), []).rollout.sampler_python is None  # dropped: never taken from a run dir
    with pytest.raises(ConfigError, match="rollout.sampler_python: must be the path of a Python interpreter"):
        _run_config(str(run), [f"rollout.sampler_python=touch {marker};python"])
    assert _run_config(str(run), [f"rollout.sampler_python={sys.executable}"]).rollout.sampler_python == sys.executable
    with pytest.raises(ConfigError, match="is not an executable file"):
        load_config(None, [f"rollout.sampler_python={tmp_path / 'nope'}"])
    assert not marker.exists()


def test_eval_run_evaluates_that_run_wherever_its_config_points(tmp_path, monkeypatch):
    from skill1.cli import _run_config

    run = tmp_path / "moved" / "mine"
    run.mkdir(parents=True)
    save_config(load_config(None, ["output_dir=runs", "name=someone-else"]), run / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert _run_config(str(run), []).run_dir == run.resolve()
    assert _run_config("moved/mine", []).run_dir == run.resolve()


# ---- damaged and foreign files ----------------------------------------------------------------------------

def test_damaged_checkpoint_files_are_one_line_errors(tmp_path):
    path = write_checkpoint(tmp_path, _state(1), [], _learner(), keep=0)
    (path / "state.json").write_text('{"iteration": 1, "polic')  # truncated
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        latest_checkpoint(tmp_path)
    path = write_checkpoint(tmp_path, _state(2), [], _learner(), keep=0)
    (path / "state.json").write_text(json.dumps({**json.loads((path / "state.json").read_text()),
                                                 "iteration": "two"}))
    with pytest.raises(CheckpointError, match="iteration"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("../../etc")
    with pytest.raises(CheckpointError, match="not a checkpoint of this run"):
        latest_checkpoint(tmp_path)


def test_a_stray_iter_folder_is_neither_pruned_nor_a_crash(tmp_path):
    (tmp_path / "checkpoints" / "iter-backup").mkdir(parents=True)
    for it in (1, 2, 3):
        write_checkpoint(tmp_path, _state(it), [], _learner(), keep=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter-3", "iter-backup", "latest"]


def test_latest_moves_only_when_every_ranks_state_is_there(tmp_path):
    write_checkpoint(tmp_path, _state(1), [], _learner(ranks=2), keep=0, learner_ranks=2)
    with pytest.raises(CheckpointError, match="rng-rank1.pt"):
        write_checkpoint(tmp_path, _state(2), [], _learner(ranks=1), keep=0, learner_ranks=2)
    assert latest_checkpoint(tmp_path).state.iteration == 1


def test_final_is_replaced_in_one_rename(tmp_path):
    def build(d):
        os.makedirs(d)
        Path(d, "config.json").write_text("new")

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("old")
    publish_dir(build, tmp_path / "final")
    assert (tmp_path / "final" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]

    def crash(d):
        os.makedirs(d)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_dir(crash, tmp_path / "final")
    assert (tmp_path / "final" / "config.json").read_text() == "new"  # the old one stands


def test_a_torn_last_jsonl_line_is_dropped_with_a_warning(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"st')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in read_jsonl(f)] == [1, 2]
    with pytest.warns(UserWarning):
        assert truncate_jsonl(f, "step", 1) == 2
    assert f.read_text() == '{"step": 1}\n'
    f.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match="line 2"):
        read_jsonl(f)


@pytest.mark.parametrize("text, match", [("", "empty file"), ("rollout: [1, 2\n", "not valid YAML"),
                                         ("- a\n- b\n", "expected a mapping"), (b"\xff\xfe\x00", "not valid YAML")])
def test_an_empty_or_invalid_yaml_is_one_line(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_resume_refuses_a_checkpoint_of_other_prompts(tmp_path):
    from skill1.loop.train import _prepare_resume

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=r"])
    write_checkpoint(cfg.run_dir, _state(1, prompt_version="v1"), [], _learner(), keep=0)
    with pytest.raises(ConfigError, match="prompts v1"):
        _prepare_resume(cfg)


def test_auto_resume_on_a_run_dir_without_a_checkpoint_starts_it_over(tmp_path, monkeypatch):
    """A KubeRay retry whose first attempt died before its first checkpoint: the same run, started over."""
    from skill1.cli import build_parser, train_config

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=r"])
    fresh_run_dir(cfg.run_dir, overwrite=False)
    save_config(cfg, cfg.run_dir / "config.yaml")  # all the first attempt left
    args = build_parser().parse_args(["train", "--auto-resume", "--config", str(cfg.run_dir / "config.yaml"),
                                      f"output_dir={tmp_path}", "name=r"])
    cfg2, mode = train_config(args)
    assert mode == "restart"
    import skill1.loop.train as trainer

    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started

    monkeypatch.setattr(trainer, "ensure_policy", started)  # stop once the run dir is made
    with pytest.raises(OwnershipError, match="already holds a run"):  # a plain start still refuses it
        trainer.train(cfg2)
    with pytest.raises(Started):
        trainer.train(cfg2, restart=True)
    assert is_run_dir(cfg2.run_dir) and not (cfg2.run_dir / "config.yaml").exists()


def _crafted_run(tmp_path: Path, marker: Path) -> Path:
    """A run dir as a colleague might send it: a valid config and checkpoint, then one payload per test."""
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=sent", "rollout.backend=scripted"])
    fresh_run_dir(cfg.run_dir, overwrite=False)
    save_config(cfg, cfg.run_dir / "config.yaml")
    write_checkpoint(cfg.run_dir, _state(1, prompt_version=PROMPT_VERSION), [], _learner(), keep=0)
    final = cfg.run_dir / "checkpoints" / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    return cfg.run_dir


# eval reads the policy dir, the library and the driver state (for the run's wandb id), never the learner state
@pytest.mark.parametrize("command, place", [("resume", "driver.pkl"), ("resume", "torch_state.pt"),
                                            ("resume", "rng-rank0.pt"), ("eval", "driver.pkl")])
def test_a_crafted_run_dir_is_refused_in_one_line_and_nothing_runs(tmp_path, place, command, capsys):
    marker = tmp_path / "pwned"
    run = _crafted_run(tmp_path, marker)
    ckpt = run / "checkpoints" / "iter-1"
    if place == "driver.pkl":
        (ckpt / "driver.json").unlink()
        (ckpt / "driver.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"model": _Payload(marker)}, ckpt / "learner" / place)
    argv = ["train", "--resume", str(run)] if command == "resume" else ["eval", "--run", str(run)]
    rc, err = _skill1(capsys, *argv)
    assert rc == 2, err[-2000:]
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert not marker.exists()


def test_a_user_facing_error_raised_in_an_actor_is_one_line(monkeypatch, capsys):
    import ray

    import skill1.cli as cli
    from skill1.learner.learner import NonFiniteUpdates

    cause = NonFiniteUpdates("learner: 3 updates in a row had a non-finite loss or gradient")

    def fails(args):
        raise ray.exceptions.RayTaskError("Learner.update", "Traceback (most recent call last):\n ...", cause)

    monkeypatch.setattr(cli, "_train", fails)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["train"].set_defaults(fn=fails)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == "error: learner: 3 updates in a row had a non-finite loss or gradient\n"


def test_a_second_first_time_model_build_is_refused_while_one_runs(tmp_path):
    from skill1.tiny_policy.provision import ensure_policy

    target = tmp_path / "models" / "tiny"
    with DirLock(target, "tiny-model build"):  # another process building it now
        with pytest.raises(OwnershipError, match="in use by another tiny-model build"):
            ensure_policy(ModelConfig(path=str(target)), _settings())
    assert not target.exists()
