"""Utility EMA, UCB retrieval score and eviction score, by hand."""

import math

import numpy as np
import pytest

from skill1.algo.utility import ema_update, eviction_score, ucb_scores
from skill1.library.retrieval import retrieve
from skill1.types import RetrievalSettings, Skill


def test_ema_by_hand():
    assert ema_update(0.5, [1.0, 0.0], 0.1) == pytest.approx(0.495)  # 0.5 → 0.55 → 0.495
    assert ema_update(0.3, [], 0.05) == 0.3


def test_ucb_by_hand_and_greedy():
    u, n, cos = np.array([0.5, 0.2]), np.array([3.0, 0.0]), np.array([0.9, 0.8])
    s = ucb_scores(u, n, cos, total_uses=4, exploration=0.5, similarity_weight=1.0)
    # 0.5 + 0.5*sqrt(ln4/4) + 0.9 = 1.6943; 0.2 + 0.5*sqrt(ln4/1) + 0.8 = 1.5887
    assert s == pytest.approx([0.5 + 0.5 * math.sqrt(math.log(4) / 4) + 0.9, 0.2 + 0.5 * math.sqrt(math.log(4)) + 0.8])
    greedy = ucb_scores(u, n, cos, total_uses=4, exploration=0.0, similarity_weight=1.0)
    assert greedy == pytest.approx([1.4, 1.0])
    # exploration lets the never-used skill overtake the better one
    assert np.argmax(ucb_scores(u, n, cos, 100, exploration=2.0, similarity_weight=1.0)) == 1


def test_eviction_score_prefers_useful_and_used():
    assert eviction_score(0.8, 0) == 0.0
    assert eviction_score(0.5, 3) == pytest.approx(0.5 * math.log(4))
    assert eviction_score(0.2, 100) < eviction_score(0.9, 10)


class _Lib:
    """The two methods retrieval uses, over fixed rows."""

    def __init__(self, rows):
        self.rows = rows

    def size(self):
        return len(self.rows)

    def search(self, embs, top_m):
        return [self.rows[:top_m] for _ in range(len(embs))]


class _Enc:
    def encode(self, texts):
        return np.zeros((len(texts), 4), dtype=np.float32)


def test_retrieve_rescores_and_truncates_to_top_k():
    rows = [(Skill("a", "sa", "ta", utility=0.1, uses=5), 0.9), (Skill("b", "sb", "tb", utility=0.9, uses=5), 0.5),
            (Skill("c", "sc", "tc", utility=0.0, uses=0), 0.4)]
    greedy = retrieve(_Lib(rows), _Enc(), ["q"], RetrievalSettings(top_k=2, exploration=0.0), total_uses=10)[0]
    assert [c.skill_id for c in greedy] == ["b", "a"]  # 1.4 vs 1.0 vs 0.4
    explore = retrieve(_Lib(rows), _Enc(), ["q"], RetrievalSettings(top_k=1, exploration=3.0), total_uses=10)[0]
    assert [c.skill_id for c in explore] == ["c"]  # the unused skill's bonus wins
    assert retrieve(_Lib([]), _Enc(), ["q"], RetrievalSettings(), 0) == [[]]
