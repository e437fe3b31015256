"""Per-stage metrics from hand-made episodes: values, not just keys."""

import pytest

from skill1.algo.advantages import EpisodeCredit
from skill1.metrics import episode_metrics
from skill1.types import Candidate, Episode, Segment, Stage, Task


def _seg(stage, valid=True, n=3):
    return Segment(stage, [1, 2], [5] * n, [-0.5] * n, "x", valid)


def _episode(success, chosen, cands, segs, errors, family="pick_and_place"):
    task = Task("t", "builtin", family, "do it")
    return Episode("e", "g", task, segs, cands, chosen, float(success), success, num_steps=2,
                   num_invalid_actions=sum(1 for s in segs if s.stage is Stage.ACT and not s.valid),
                   parse_errors=errors)


def test_stage_metrics_by_hand():
    cands = [Candidate("a", "", "", 0.9, 1, 0.5, 1.0), Candidate("b", "", "", 0.1, 1, 0.5, 0.9)]
    e1 = _episode(True, "a", cands, [_seg(Stage.QUERY), _seg(Stage.RERANK), _seg(Stage.ACT), _seg(Stage.ACT),
                                     _seg(Stage.DISTILL)], {})
    e2 = _episode(False, "b", cands, [_seg(Stage.QUERY, False), _seg(Stage.RERANK), _seg(Stage.ACT, False),
                                      _seg(Stage.ACT), _seg(Stage.DISTILL, False)],
                  {"query/missing_tag": 1, "act/inadmissible": 1, "distill/too_long": 1}, family="pick_heat_then_place")
    credits = [EpisodeCredit(1.0, 1.3, 0.9, 0.4, 0.1), EpisodeCredit(-1.0, -1.2, -1.1, -0.4, -0.9)]
    m = episode_metrics([e1, e2], credits)
    assert m["rollout/success"] == 0.5 and m["rollout/success/pick_and_place"] == 1.0
    assert m["rollout/success/pick_heat_then_place"] == 0.0
    assert m["select/query/valid_rate"] == 0.5 and m["select/rerank/valid_rate"] == 1.0
    assert m["act/valid_rate"] == 0.75 and m["distill/valid_rate"] == 0.5
    assert m["act/invalid_actions"] == 0.5
    assert m["select/query/invalid/missing_tag"] == 1 and m["act/invalid/inadmissible"] == 1
    assert m["distill/invalid/too_long"] == 1
    assert m["select/chosen_utility"] == pytest.approx(0.5) and m["select/best_utility"] == pytest.approx(0.9)
    assert m["select/chose_best"] == 0.5
    assert m["select/advantage"] == pytest.approx(0.05) and m["distill/advantage"] == pytest.approx(-0.1)
    assert m["act/advantage_abs"] == pytest.approx(1.0) and m["distill/r_dis"] == pytest.approx(-0.4)
    assert m["rollout/tokens_generated"] == 30


def test_no_candidates_no_selection_utilities():
    m = episode_metrics([_episode(False, None, [], [_seg(Stage.ACT)], {})])
    assert m["select/with_candidates"] == 0 and "select/chosen_utility" not in m
