"""Evaluation: reproducible run to run (fixed episode ids seed the draws), the pieces the trainer reuses
(`eval_tasks`, `eval_request`, `summarize`), the rollout worker running again after streaming, and the
eval / resume command-line errors on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skill1.cli import main
from skill1.config import load_config, save_config
from skill1.types import Episode, Segment, Stage, Task

FAST = ["env.max_steps=3", "rollout.max_new_tokens_act=16", "rollout.max_new_tokens_distill=16",
        "rollout.max_new_tokens_query=8", "rollout.max_new_tokens_rerank=4", "logging.progress=false",
        "env.eval_tasks=4"]


def _trace(ep: Episode) -> tuple:
    """Everything an episode drew and what came of it (not its id: the draws must agree, not just the names)."""
    return (ep.task.task_id, ep.query, ep.chosen_skill_id, ep.success, ep.outcome, ep.num_steps,
            ep.num_invalid_actions, ep.env_failed,
            [(s.stage.value, s.response_ids, s.text, s.valid) for s in ep.segments])


@pytest.mark.slow
def test_evaluating_a_checkpoint_twice_gives_the_same_episodes(small_model_dir, tmp_path, monkeypatch, local_ray):
    """At temperature 1 a random model's every token is a real draw: only the fixed per-episode seeds make
    two evaluations agree (run-unique episode ids gave each evaluation its own draws)."""
    import skill1.evaluate as ev

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=repro", f"model.path={small_model_dir}",
                             "rollout.eval_temperature=1.0", *FAST])
    cfg.run_dir.mkdir(parents=True)
    seen: list[list[Episode]] = []
    summarize = ev.summarize
    monkeypatch.setattr(ev, "summarize", lambda episodes, **extra: (seen.append(episodes),
                                                                    summarize(episodes, **extra))[1])
    first = ev.evaluate(cfg, checkpoint=small_model_dir)
    second = ev.evaluate(cfg, checkpoint=small_model_dir)
    assert len(seen) == 2 and len(seen[0]) == 4
    assert sum(len(e.segments) for e in seen[0]) > 4  # every episode generated (query + actions)
    assert [_trace(e) for e in seen[0]] == [_trace(e) for e in seen[1]]
    assert [e.episode_id for e in seen[0]] == [e.episode_id for e in seen[1]]
    assert first == second
    assert first["settings"] == {"temperature": 1.0, "top_p": 1.0, "seed": 0, "eval_seed": 0, "backend": "hf",
                                 "dtype": cfg.model.dtype,
                                 "torch_threads": cfg.rollout.torch_threads, "num_samplers": 1,
                                 "sampler_threads": [cfg.rollout.torch_threads]}
    assert json.loads((cfg.run_dir / "eval.json").read_text()) == second


# ---------------------------------------------------------------- the pieces (no Ray)
def test_eval_request_is_deterministic_and_evaluation_shaped(tmp_path):
    from skill1.evaluate import eval_request, eval_tasks

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=req", "env.eval_tasks=5", "rollout.eval_temperature=0.3"])
    tasks = eval_tasks(cfg)
    assert [t.task_id for t in tasks] == [t.task_id for t in eval_tasks(cfg)] and len(tasks) == 5
    a, b = eval_request(cfg, tasks, 7, 3), eval_request(cfg, tasks, 7, 3)
    assert a.episode_ids == b.episode_ids and len(set(a.episode_ids)) == 5
    assert a.episode_ids[0] == f"eval-0-{tasks[0].task_id}"
    assert a.group_ids == [t.task_id for t in tasks] and a.tasks == tasks
    assert (a.temperature, a.top_p, a.library_version, a.policy_version) == (0.3, 1.0, 7, 3)
    assert a.retrieval.exploration == 0.0 and not a.settings.enable_distillation


def _episode(family: str, success: bool, valid: list[bool], env_failed: bool = False) -> Episode:
    task = Task(task_id=f"builtin/{family}/1", env="builtin", family=family, description="d", payload={})
    segs = [Segment(Stage.QUERY, [1], [2], [0.0], "q")] + [Segment(Stage.ACT, [1], [2], [0.0], "a", v) for v in valid]
    return Episode(episode_id="e", group_id="g", task=task, segments=segs, candidates=[], chosen_skill_id=None,
                   outcome=float(success), success=success, num_steps=len(valid), num_invalid_actions=0,
                   env_failed=env_failed)


def test_summarize_leaves_out_env_failures_and_counts_per_family():
    from skill1.evaluate import eval_metrics, summarize

    eps = [_episode("heat", True, [True, True]), _episode("heat", False, [False, True]),
           _episode("cool", True, [True]), _episode("cool", True, [], env_failed=True)]
    report = summarize(eps, split="eval", library_version=None)
    assert report == {"split": "eval", "library_version": None, "episodes": 3, "env_failed_episodes": 1,
                      "success": 2 / 3, "success_by_family": {"cool": 1.0, "heat": 0.5},
                      "episodes_by_family": {"cool": 1, "heat": 2}, "valid_action_rate": 4 / 5}
    assert eval_metrics(report)["eval/success/heat"] == 0.5
    with pytest.raises(RuntimeError, match="all 2 episodes failed in the environment"):
        summarize([_episode("heat", False, [], env_failed=True)] * 2)


def test_worker_runs_again_after_streaming_is_stopped(small_model_dir):
    """Streaming refuses `run`; `stop()` ends the loop and resets it, so `run` works and a new stream starts."""
    from skill1.evaluate import eval_request
    from skill1.rollout.worker import RolloutWorker

    worker = RolloutWorker(small_model_dir, [], [], None, "")
    empty = eval_request(load_config(None, ["name=w"]), [], None, 0)
    worker.submit([])
    assert worker._thread is not None and worker._thread.is_alive()
    with pytest.raises(RuntimeError, match="streaming"):
        worker.run(empty)
    thread = worker._thread
    worker.stop()
    assert not thread.is_alive() and worker._thread is None and not worker._stop.is_set()
    assert worker.run(empty) == []
    worker.submit([])  # a fresh loop, not one that sees the old stop signal and exits
    assert worker._thread is not thread and worker._thread.is_alive()
    worker.stop()
    worker.stop()  # idempotent; a no-op when not streaming
    assert worker._thread is None


# ---------------------------------------------------------------- command-line errors (no Ray)
def _run_dir(root: Path, checkpoint: bool = True) -> Path:
    cfg = load_config(None, ["name=evalcli", f"output_dir={root}"])
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    if checkpoint:
        (cfg.run_dir / "checkpoints" / "final").mkdir(parents=True)
        (cfg.run_dir / "checkpoints" / "final" / "config.json").write_text("{}")
    return cfg.run_dir


def test_eval_with_a_missing_library_tag_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import skill1.evaluate as ev
    from skill1.library import Encoder, SkillLibrary

    run = _run_dir(tmp_path)
    cfg = load_config(run / "config.yaml")
    enc = Encoder(cfg.library.encoder)
    lib = SkillLibrary.open(str(run / "library"), enc.name, enc.dim)
    for tag in ("iter-1", "iter-2", "iter-10"):
        lib.tag(tag)
    monkeypatch.setattr(ev, "init_ray", lambda cfg: None)  # the tag is looked up before any actor starts
    monkeypatch.setattr(ev, "start_fleet", lambda *a, **k: pytest.fail("started a fleet for a missing tag"))
    assert main(["eval", "--run", str(run), "--library-tag", "iter-9"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --library-tag: no tag 'iter-9'; the library has: iter-1, iter-2, iter-10\n"


def test_a_library_tag_for_a_run_without_a_library_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    import skill1.evaluate as ev

    run = _run_dir(tmp_path)  # the skill1 preset, but no library written yet
    monkeypatch.setattr(ev, "init_ray", lambda cfg: None)
    monkeypatch.setattr(ev, "start_fleet", lambda *a, **k: pytest.fail("started a fleet"))
    assert main(["eval", "--run", str(run), "--library-tag", "iter-1"]) == 2
    assert capsys.readouterr().err == f"error: --library-tag: {run} has no skill library to pin (preset skill1)\n"
    assert main(["eval", "--run", str(run), "--library-tag", "iter-1", "algorithm.preset=grpo"]) == 2
    assert capsys.readouterr().err.endswith("(preset grpo: no library)\n")


def test_eval_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    run = _run_dir(tmp_path, checkpoint=False)
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no policy checkpoint at ") and err.count("\n") == 1


def test_resume_of_a_missing_run_names_the_resume_flag(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ") and "missing has no config.yaml" in err and err.count("\n") == 1
    assert main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: --run: ")
