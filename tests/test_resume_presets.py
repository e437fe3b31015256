"""Resume works for every preset. The presets that write nothing to the library (grpo, no_library), and any
iteration without a valid skill, tag the same library version twice; resuming from the first of two such tags
used to leave the second, and the resumed iteration's tag failed ("Tag 'iter-2' already exists").

Every preset: the trainer's real library step (`update_library`) for two iterations, the resume's rollback to
iter-1, and iteration 2 again, without Ray (seconds). One preset end to end: `train`, then
`train(resume=True)` from iter-1 on local Ray."""

from __future__ import annotations

import numpy as np
import pytest

from skill1.config import PRESETS, load_config
from skill1.types import Episode, SkillDraft, Task


class _Encoder:
    name, dim = "test-encoder", 8

    def encode(self, texts):
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _episodes(it: int, chosen: str | None) -> list[Episode]:
    task = Task(f"t{it}", "builtin", "pick_and_place", f"put a mug {it}", {"seed": it})
    return [Episode(f"e{it}-{j}", "g", task, [], [], chosen, float(j), bool(j), 3, 0,
                    draft=SkillDraft(f"scenario {it}-{j}", f"strategy {it}-{j}")) for j in range(2)]


@pytest.mark.parametrize("preset", PRESETS)
def test_the_library_resumes_from_a_checkpoint_for_every_preset(preset, tmp_path):
    from skill1.library.store import SkillLibrary
    from skill1.loop.steps import update_library

    cfg = load_config(None, [f"algorithm.preset={preset}", "library.compact_every=0"])
    enc = _Encoder()
    lib = SkillLibrary.open(str(tmp_path / "lib"), enc.name, enc.dim)
    update_library(lib, enc, _episodes(1, None), 1, cfg)
    chosen = lib.all_skills()[0].id if lib.size() else None
    update_library(lib, enc, _episodes(2, chosen), 2, cfg)
    at_1 = sorted((s.id, s.utility, s.uses) for s in lib.checkout("iter-1").all_skills())
    assert lib.rollback("iter-1") == ["iter-2"]  # what the resume from checkpoint iter-1 does
    assert sorted((s.id, s.utility, s.uses) for s in lib.all_skills()) == at_1
    update_library(lib, enc, _episodes(2, chosen), 2, cfg)  # iteration 2 again: tags iter-2 anew
    assert set(lib.tags()) == {"iter-1", "iter-2"}


@pytest.mark.slow
def test_a_grpo_run_resumes_end_to_end(small_model_dir, tmp_path, local_ray):
    from skill1.checkpoint import latest_checkpoint
    from skill1.loop.train import train

    over = [f"output_dir={tmp_path}", "name=grpo", f"model.path={small_model_dir}", "algorithm.preset=grpo",
            "eval_at_ends=false", "eval_every=0", "rollout.backend=scripted", "rollout.mode=sync",
            "learner.backend=torch", "algorithm.tasks_per_iteration=2", "algorithm.group_size=2", "env.max_steps=3",
            "logging.progress=false", "logging.wandb_mode=disabled", "save_every=1", "keep_checkpoints=0",
            "algorithm.iterations=2"]
    train(load_config(None, over))
    run = tmp_path / "grpo"
    (run / "checkpoints" / "latest").write_text("iter-1")  # as after a crash during iteration 2
    result = train(load_config(run / "config.yaml", over), resume=True)
    assert result.stopped_at is None and latest_checkpoint(run).state.iteration == 2
    assert {t for t in result.library_tags if t.startswith("iter-")} == {"iter-1", "iter-2"}
