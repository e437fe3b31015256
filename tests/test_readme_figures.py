"""The README's quickstart figures come from a run's own files (bench/readme_figures.py), never by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def figures():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "bench/readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path) -> tuple[Path, Path]:
    run, model = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    model.mkdir()
    lines = [{"step": 0, "eval/success": 0.25, "eval/valid_action_rate": 0.5, "eval/episodes": 8.0}]
    for it in (1, 2, 3):
        lines.append({"step": it, "rollout/reward": 0.1 * it, "rollout/success": 0.1 * it, "rollout/episodes": 16.0,
                      "time/iteration_s": [40.0, 9.5, 12.5][it - 1], "select/retrieval_rate": [0.0, 1.0, 0.9][it - 1],
                      "library/size": 4.0 * it, "library/mean_utility": 0.05, "select/chosen_utility": 0.02,
                      "select/best_utility": 0.04, "select/chose_best": [0.0, 0.5, 0.75][it - 1]})
    lines.append({"step": 3, "eval/success": 0.375, "eval/valid_action_rate": 1.0, "eval/episodes": 8.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (model / "skill1_provenance.json").write_text(json.dumps({"build_s": 130.0, "warm_start_steps": 1600}))
    return run, model


def test_the_figures_are_the_runs_own(figures, tmp_path):
    run, model = _run(tmp_path)
    record = {"date": "2026-12-05", "machine": "2 CPU cores", "run": {"train_s": 95.0},
              "summary": figures.summarize(run, model)}
    text = figures.render(record)
    assert "| held-out (8 tasks, greedy) | before | after 3 |" in text
    assert "| success | 0.250 | 0.375 |" in text and "| valid, admissible actions | 0.50 | 1.00 |" in text
    assert "2 min 10 s" in text and "1 min 35 s" in text and "3 min 45 s" in text  # build, run, both
    assert "9.5–12.5 s after a first of 40 s" in text and "(2 → 3 of 8 tasks)" in text
    assert "at least 90% of the episodes" in text and "0.00–0.75" not in text and "0.50–0.75" in text


def test_only_the_marked_block_of_the_readme_is_rewritten(figures, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\nbefore\n{figures.START}\nold figures\n{figures.END}\nafter\n")
    monkeypatch.setattr(figures, "README", readme)
    figures.write_readme("new figures")
    assert readme.read_text() == f"# T\nbefore\n{figures.START}\nnew figures\n{figures.END}\nafter\n"
    readme.write_text("no block")
    with pytest.raises(SystemExit, match="no <!-- figures:quickstart -->"):
        figures.write_readme("x")


def test_the_committed_record_renders_the_readme_block_as_committed(figures):
    """README and docs/quickstart_run.json agree: the block was written by the script, not edited by hand."""
    block = figures.render(json.loads(figures.RECORD.read_text()))
    assert f"{figures.START}\n{block}\n{figures.END}" in figures.README.read_text()
