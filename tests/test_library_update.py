"""The driver's per-iteration library step: utilities, admission (accept/merge/reject), eviction, tag."""

import numpy as np
import pytest

from skill1.config import load_config
from skill1.library.store import SkillLibrary
from skill1.loop.steps import update_library
from skill1.types import Episode, SkillDraft, Task


class FakeEncoder:
    """Same scenario text → same vector, so repeated scenarios are exact duplicates."""

    name, dim = "fake", 8

    def encode(self, texts):
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _ep(i, outcome, chosen=None, draft=None):
    return Episode(f"e{i}", "g", Task(f"t{i}", "builtin", "pick_and_place", "do"), [], [], chosen, outcome,
                   outcome == 1.0, 1, 0, draft=draft)


def test_update_library_counts_and_tags(tmp_path):
    cfg = load_config(None, ["library.alpha=0.5", "library.max_skill_chars=40"])
    lib = SkillLibrary.open(str(tmp_path / "lib"), "fake", 8)
    eps = [_ep(0, 1.0, draft=SkillDraft("heat things", "use the microwave")),
           _ep(1, 0.0, draft=SkillDraft("heat things", "use the microwave please")),  # duplicate scenario
           _ep(2, 0.0, draft=SkillDraft("cool things", "x" * 41))]  # over-long
    m = update_library(lib, FakeEncoder(), eps, iteration=1, cfg=cfg)
    assert (m["library/accepted"], m["library/merged"], m["library/rejected"]) == (1, 1, 1)
    assert m["library/size"] == 1 and lib.tags() == {"iter-1": lib.version}
    skill = lib.all_skills()[0]
    # the skill is used by two episodes in iteration 2: u = 0 → 0.5 (r=1) → 0.25 (r=0), one batched write
    before = lib.version
    m2 = update_library(lib, FakeEncoder(), [_ep(3, 1.0, chosen=skill.id), _ep(4, 0.0, chosen=skill.id)], 2, cfg)
    updated = lib.get([skill.id])[0]
    assert updated.utility == pytest.approx(0.25) and updated.uses == 2 and updated.wins == 1
    assert m2["library/skills_updated"] == 1 and lib.version == before + 1  # one write for both outcomes
    assert lib.tags()["iter-2"] == lib.version and lib.checkout("iter-1").get([skill.id])[0].utility == 0.0
