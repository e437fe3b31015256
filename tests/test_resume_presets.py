"""Resume works for every preset, in process: two iterations with a checkpoint after each, then
`train(resume=True)` from the first, which makes the second again. The presets that write nothing to the library (grpo, no_library) tag the same
library version twice, which used to make the resumed iteration's tag fail ("Tag 'iter-2' already exists")."""

from __future__ import annotations

import pytest

from skill1.config import PRESETS, load_config

pytestmark = pytest.mark.slow

FAST = ["eval_at_ends=false", "eval_every=0", "rollout.backend=scripted", "rollout.mode=sync", "learner.backend=torch",
        "algorithm.tasks_per_iteration=2", "algorithm.group_size=2", "env.max_steps=3", "logging.progress=false",
        "logging.wandb_mode=disabled", "save_every=1", "keep_checkpoints=0"]


@pytest.mark.parametrize("preset", PRESETS)
def test_resume_after_a_checkpoint_works_for_every_preset(preset, small_model_dir, tmp_path, local_ray):
    from skill1.checkpoint import latest_checkpoint
    from skill1.trainer import train

    over = [f"output_dir={tmp_path}", f"name={preset}", f"model.path={small_model_dir}",
            f"algorithm.preset={preset}", *FAST]
    train(load_config(None, [*over, "algorithm.iterations=2"]))
    ckpts = tmp_path / preset / "checkpoints"
    # resume from iter-1, as after a crash during iteration 2: iteration 2 and its tag are made again
    (ckpts / "latest").write_text("iter-1")
    result = train(load_config(ckpts.parent / "config.yaml", [*over, "algorithm.iterations=2"]), resume=True)
    assert result.stopped_at is None and latest_checkpoint(ckpts.parent).state.iteration == 2
    iters = {t for t in result.library_tags if t.startswith("iter-")}
    assert iters == {"iter-1", "iter-2"}
