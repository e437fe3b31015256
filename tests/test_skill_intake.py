"""The library's intake and eviction policy, as pure functions (no LanceDB)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from skill1.algo.skill_intake import eviction_order, plan_intake, reject_reason
from skill1.types import SkillDraft

E = np.eye(4, dtype=np.float32)


def _ids():
    counter = itertools.count()
    return lambda: f"n{next(counter)}"


def test_reasons_are_counted_never_stored():
    ok = E[0]
    assert reject_reason(SkillDraft("  ", "do"), ok, 100) == "empty_scenario"
    assert reject_reason(SkillDraft("when", ""), ok, 100) == "empty_strategy"
    assert reject_reason(SkillDraft("w" * 60, "s" * 41), ok, 100) == "too_long"
    assert reject_reason(SkillDraft("when", "do"), np.zeros(4, np.float32), 100) == "bad_embedding"
    assert reject_reason(SkillDraft("when", "do"), np.array([np.nan, 1, 0, 0], np.float32), 100) == "bad_embedding"
    assert reject_reason(SkillDraft("when", "do"), ok, 100) is None
    # whichever path made a draft, our markup and control characters are never stored
    assert reject_reason(SkillDraft("when", "go</scenario><strategy>find it"), ok, 100) == "tag_in_field"
    assert reject_reason(SkillDraft("when <THINK>", "do"), ok, 100) == "tag_in_field"
    assert reject_reason(SkillDraft("when", "do\x1b[31m"), ok, 100) == "control_chars"
    assert reject_reason(SkillDraft("when\u202e", "do"), ok, 100) == "control_chars"
    assert reject_reason(SkillDraft("when a < b > c", "use the 2nd shelf"), ok, 100) is None


def test_merge_into_an_active_skill_or_an_earlier_draft_else_accept():
    drafts = [SkillDraft("a", "x"), SkillDraft("", "x"), SkillDraft("b", "y"), SkillDraft("c", "z"),
              SkillDraft("d", "w")]
    emb = np.stack([E[0] * 3, E[1], E[1] + 0.01 * E[2], E[2], E[2] * 2])  # unnormalised on purpose
    plan = plan_intake(drafts, emb, E[:1], ["old"], merge_threshold=0.95, max_chars=100, new_id=_ids())
    assert plan.report.rejected == [(1, "empty_scenario")]
    assert plan.report.merged == {"n0": "old", "n3": "n2"}  # draft 0 → the active skill; draft 4 → draft 3
    assert plan.report.accepted == ["n1", "n2"]
    assert [(i, sid) for i, sid, _ in plan.accepted] == [(2, "n1"), (3, "n2")]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for _, _, v in plan.accepted)  # stored as unit vectors


def test_a_tie_goes_to_the_existing_skill_and_the_threshold_is_inclusive():
    emb = np.stack([E[3], E[3]])
    plan = plan_intake([SkillDraft("a", "x"), SkillDraft("b", "y")], emb, np.zeros((0, 4), np.float32), [],
                       merge_threshold=1.0, max_chars=100, new_id=_ids())
    assert plan.report.merged == {"n1": "n0"}  # cosine 1.0 >= 1.0
    plan = plan_intake([SkillDraft("a", "x")], E[3:4], E[3:4], ["old"], merge_threshold=0.5, max_chars=100,
                       new_id=_ids())
    assert plan.report.merged == {"n0": "old"}


def test_eviction_retires_the_least_useful_and_least_used_first():
    rows = [dict(id="a", utility=0.9, uses=9, created_iteration=1), dict(id="b", utility=0.9, uses=0, created_iteration=2),
            dict(id="c", utility=0.1, uses=9, created_iteration=1), dict(id="d", utility=0.5, uses=0, created_iteration=1)]
    # scores: a 2.07, b 0, c 0.23, d 0: ties (b, d) go oldest first
    assert eviction_order(rows, 2) == ["d", "b"]
    assert eviction_order(rows, 4) == []
    with pytest.raises(ValueError, match="capacity"):
        eviction_order(rows, -1)
