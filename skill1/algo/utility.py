"""Skill utility (the low-frequency trend) and the scores built on it. Pure: floats and numpy only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ema_update(utility: float, outcomes: Sequence[float], alpha: float) -> float:
    """u <- (1 - alpha) u + alpha r, applied once per outcome in order."""
    for r in outcomes:
        utility = (1.0 - alpha) * utility + alpha * float(r)
    return utility


def ucb_scores(
    utilities: np.ndarray,
    uses: np.ndarray,
    similarities: np.ndarray,
    total_uses: int,
    exploration: float,
    similarity_weight: float,
) -> np.ndarray:
    """Training-time retrieval score: u + c * sqrt(ln N / (n + 1)) + w * cos.

    N is the library's total use count (at least 1 so that ln N >= 0); a never-used skill gets the
    largest bonus. With exploration = 0 this is the greedy (evaluation) score.
    """
    bonus = exploration * np.sqrt(math.log(max(total_uses, 1)) / (uses + 1.0))
    return utilities + bonus + similarity_weight * similarities


def eviction_score(utility: float, uses: int) -> float:
    """Lower is evicted first: a skill must be both useful and used to stay [ours]."""
    return utility * math.log(uses + 1.0)
