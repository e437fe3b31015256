"""Checkpoint files (atomic, newest pointer, pruning), metric/ledger truncation, library rollback to a tag,
the SIGTERM flag, the consumed-episode guard, and the wandb / Ray-metrics payloads. No Ray, no model."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from skill1.checkpoint import (StopRequest, TrainState, latest_checkpoint, load_checkpoint, truncate_jsonl,
                               write_checkpoint)
from skill1.metrics import NAMESPACES, RayGauges, skill_panels
from skill1.types import Skill, SkillDraft


def _state(it: int, **kw) -> TrainState:
    base = dict(iteration=it, policy_version=it, library_tag=f"iter-{it}", library_version=2 * it, next_seq=2 * it,
                running_seqs=[2 * it, 2 * it + 1], trained_groups=list(range(2 * it)),
                consumed_episodes=[f"g{i}-0" for i in range(2 * it)], reference_model="/m", wandb_run_id="abc")
    return TrainState(**{**base, **kw})


def _fake_learner(calls: list):
    def save(policy_dir: str, learner_dir: str) -> None:
        calls.append((policy_dir, learner_dir))
        for d in (policy_dir, learner_dir):
            os.makedirs(d)
            Path(d, "weights").write_text("w")
        Path(policy_dir, "config.json").write_text("{}")  # what a complete checkpoint must hold
        Path(learner_dir, "rng-rank0.pt").write_text("r")
    return save


def test_checkpoint_round_trip_latest_pointer_and_pruning(tmp_path):
    calls = []
    for it in (1, 2, 3):
        path = write_checkpoint(tmp_path, _state(it), [{"group": it}], _fake_learner(calls), keep=2)
        assert path == tmp_path / "checkpoints" / f"iter-{it}"
    # the learner wrote into the partial dir, which then became the checkpoint
    assert all(".partial" in p for p, _ in calls)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter-2", "iter-3", "latest"]  # keep=2: iter-1 pruned
    ck = latest_checkpoint(tmp_path)
    assert ck.path.name == "iter-3" and ck.state == _state(3, saved_at=ck.state.saved_at)
    assert ck.buffer == [{"group": 3}] and (ck.policy_dir / "weights").is_file()
    assert set(ck.driver_rng) == {"python", "numpy"}


def test_a_checkpoint_cut_off_mid_write_is_never_the_latest(tmp_path):
    write_checkpoint(tmp_path, _state(1), [], _fake_learner([]), keep=0)

    def crash(policy_dir, learner_dir):
        os.makedirs(policy_dir)
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, _state(2), [], crash, keep=0)
    assert (tmp_path / "checkpoints" / "iter-2.partial").is_dir()
    assert latest_checkpoint(tmp_path).state.iteration == 1
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "checkpoints" / "iter-2.partial")
    # the next attempt at iteration 2 replaces the debris
    write_checkpoint(tmp_path, _state(2), [], _fake_learner([]), keep=0)
    assert latest_checkpoint(tmp_path).state.iteration == 2
    assert not (tmp_path / "checkpoints" / "iter-2.partial").exists()


def test_no_checkpoint_means_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_truncate_jsonl_drops_the_iterations_after_the_checkpoint(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"step": s, "x": s * 0.5}) + "\n" for s in (1, 2, 3, 4)))
    assert truncate_jsonl(f, "step", 2) == 2
    assert [json.loads(line)["step"] for line in f.read_text().splitlines()] == [1, 2]
    assert truncate_jsonl(tmp_path / "missing.jsonl", "step", 2) == 0


def test_library_rollback_restores_the_tag_and_drops_later_tags(tmp_path):
    from skill1.library.store import SkillLibrary

    dim = 8
    rng = np.random.default_rng(0)
    lib = SkillLibrary.open(str(tmp_path / "lib"), "test-encoder", dim)

    def add(n: int, it: int):
        drafts = [SkillDraft(scenario=f"scenario {it}-{i}", strategy=f"do {it}-{i}") for i in range(n)]
        lib.add(drafts, rng.normal(size=(n, dim)).astype(np.float32), iteration=it,
                source_tasks=["t"] * n, source_episodes=[f"e{it}-{i}" for i in range(n)], initial_utility=None)

    def rows(view):
        return sorted((s.id, s.scenario, s.utility, s.uses, s.status) for s in view.all_skills(active_only=False))

    add(2, 1)
    lib.tag("iter-1")
    add(2, 2)
    lib.update_utilities({lib.all_skills()[0].id: [1.0]}, alpha=0.5)
    lib.tag("iter-2")
    at_tag = rows(lib.checkout("iter-2"))
    add(3, 3)  # iteration 3's writes: tagged, then more (untagged) after it
    lib.tag("iter-3")
    lib.update_utilities({lib.all_skills()[1].id: [0.0]}, alpha=0.5)
    assert rows(lib) != at_tag

    assert lib.rollback("iter-2") == ["iter-3"]
    assert rows(lib) == at_tag
    assert set(lib.tags()) == {"iter-1", "iter-2"}
    lib.tag("iter-3")  # the resumed iteration 3 tags again
    assert lib.rollback("iter-3") == [] and rows(lib) == at_tag  # nothing moved: nothing to do
    with pytest.raises(ValueError, match="No tag"):
        lib.rollback("iter-9")


def test_sigterm_sets_the_stop_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    assert not stop
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop and stop.requested == "sigterm"
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_episode_trained_twice_is_refused(tmp_path):
    from skill1.loop.context import TrainContext
    from skill1.types import Episode, Task

    ctx = TrainContext(None, tmp_path, None, None, None, None, None, None, None)

    def ep(i):
        return Episode(f"g0-{i}", "0:t", Task("t", "builtin", "fam", "goal"), [], [], None, 1.0, True, 1, 0)

    ctx.record_trained(1, [0], [ep(0), ep(1)])
    with pytest.raises(RuntimeError, match="trained before"):
        ctx.record_trained(2, [0], [ep(1)])
    lines = [json.loads(line) for line in (tmp_path / "trained.jsonl").read_text().splitlines()]
    assert lines == [{"iteration": 1, "groups": [0], "episodes": ["g0-0", "g0-1"]}]


def test_skill_panels_table_and_histograms():
    import wandb

    skills = [Skill(id=f"s{i}", scenario=f"sc {i}", strategy=f"st {i}", utility=i / 10, uses=i) for i in range(5)]
    panels = skill_panels(skills, rows=3)
    table = panels["library/skills"]
    assert isinstance(table, wandb.Table) and len(table.data) == 3
    assert [row[0] for row in table.data] == ["s4", "s3", "s2"]  # most useful first
    assert isinstance(panels["library/utility_hist"], wandb.Histogram)
    assert sum(panels["library/uses_hist"].histogram) == 5
    assert skill_panels([], rows=3) == {}
    assert "library/skills" not in skill_panels(skills, rows=0)


def test_ray_gauge_names_are_prometheus_names():
    assert RayGauges.metric_name("rollout/success/pick_and_place") == "skill1_rollout_success_pick_and_place"
    assert RayGauges.metric_name("time/episodes_per_s") == "skill1_time_episodes_per_s"
    assert {"select", "act", "distill", "library", "learner", "eval"} <= set(NAMESPACES)


def _train_args(*argv: str):
    from skill1.cli import build_parser

    return build_parser().parse_args(["train", *argv])


def test_train_config_resume_auto_resume_and_sweep_names(tmp_path, monkeypatch):
    from skill1.cli import train_config
    from skill1.config import ConfigError, save_config

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    qs = "pipelines/configs/quickstart.yaml"
    root = Path(__file__).resolve().parents[1]
    cfg, resume = train_config(_train_args("--config", str(root / qs), f"output_dir={tmp_path}", "name=r"))
    assert not resume and cfg.run_dir == tmp_path / "r"
    # --auto-resume: nothing to resume yet -> the run (re)starts
    args = ("--auto-resume", "--config", str(root / qs), f"output_dir={tmp_path}", "name=r")
    assert train_config(_train_args(*args))[1] == "restart"
    # ... once the run has a checkpoint, its own config (moved dirs included) and the overrides
    (tmp_path / "r").mkdir()
    save_config(cfg, tmp_path / "r" / "config.yaml")
    write_checkpoint(tmp_path / "r", _state(1), [], _fake_learner([]), keep=0)
    cfg2, resume = train_config(_train_args(*args, "algorithm.iterations=9"))
    assert resume and cfg2.run_dir == tmp_path / "r" and cfg2.algorithm.iterations == 9
    with pytest.raises(ConfigError, match="--resume"):
        train_config(_train_args("--resume", str(tmp_path / "r"), "--config", qs))
    # a wandb sweep agent's run gets a run dir of its own
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    cfg3, _ = train_config(_train_args("--config", str(root / qs), f"output_dir={tmp_path}"))
    assert cfg3.name == "quickstart-abc123"


def test_rollback_drops_later_iteration_tags_of_the_same_version(tmp_path):
    """grpo / no_library / an iteration without a valid skill tag the version the iteration before tagged:
    a resume from iter-1 must drop iter-2 too, or re-tagging it fails ("Tag 'iter-2' already exists")."""
    from skill1.library.store import SkillLibrary

    lib = SkillLibrary.open(str(tmp_path / "lib"), "test-encoder", 8)
    for it in (1, 2, 3):
        lib.tag(f"iter-{it}")  # nothing written: one version, three tags
    lib.tag("keep-me")  # not an iteration tag: a user's
    assert lib.rollback("iter-1") == ["iter-2", "iter-3"]
    assert set(lib.tags()) == {"iter-1", "keep-me"}
    lib.tag("iter-2")  # the resumed iteration tags again


def test_rollouts_pin_a_tagged_version_that_compaction_keeps(tmp_path):
    """The trainer pins the newest iter-k tag, never the untagged head that compaction may remove."""
    from skill1.config import load_config
    from skill1.library.store import SkillLibrary
    from skill1.loop.context import TrainContext

    dim, rng = 8, np.random.default_rng(0)
    lib = SkillLibrary.open(str(tmp_path / "lib"), "test-encoder", dim)
    ctx = TrainContext(load_config(None, []), tmp_path, None, None, None, lib, None, None, None)
    assert ctx.pinned_library() is None  # empty
    lib.add([SkillDraft("a", "b"), SkillDraft("c", "d")], rng.normal(size=(2, dim)).astype(np.float32), iteration=1,
            source_tasks=["t", "t"], source_episodes=["e1", "e2"], initial_utility=None)
    lib.tag("iter-1")
    lib.update_utilities({lib.all_skills()[0].id: [1.0]}, alpha=0.5)  # the head moves on, untagged
    pinned = ctx.pinned_library()
    assert pinned == lib.tags()["iter-1"] and pinned != lib.version
    rows = sorted((s.id, s.utility) for s in lib.checkout(pinned).all_skills())
    lib.update_utilities({lib.all_skills()[1].id: [0.0]}, alpha=0.5)
    lib.tag("iter-2")
    lib.compact()
    assert sorted((s.id, s.utility) for s in lib.checkout(pinned).all_skills()) == rows
