"""Skill1 credit assignment from one task-outcome reward. Pure numpy; no Ray, no I/O.

    utilization:   A_i = (r_i - mean_g r) / (std_g r + eps)          GRPO over the G rollouts of a task
    selection:     A_i + lambda_rerank  * (u_chosen - mean_k u_k)     trend: what the library promised
    distillation:  A_i + lambda_distill * (r_i - u_hat),  u_hat = agg_k u_k   variation: what beat it

r_i in GRPO is the outcome minus the invalid-action penalty; the intrinsic terms use the outcome in
[0, 1] so that they share units with the utilities (EMAs of outcomes) [ours].
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from skill1.types import Stage


def grpo_advantages(
    rewards: Sequence[float], group_ids: Sequence[Hashable], normalize_std: bool = True, eps: float = 1e-6,
    singleton: str = "zero",
) -> np.ndarray:
    """Group-relative advantages. std is the unbiased (N-1) estimate, as in verl's GRPO.

    A single-member group has no baseline to compare against: its advantage is 0 (`singleton="zero"`,
    [ours]) or its raw reward (`"reward"`, verl's choice). Equal rewards in a group give 0, never NaN.
    """
    if singleton not in ("zero", "reward"):
        raise ValueError(f"singleton must be 'zero' or 'reward', got {singleton!r}")
    r = np.asarray(rewards, dtype=np.float64)
    adv = np.zeros_like(r)
    groups: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for idx in groups.values():
        if len(idx) < 2:
            adv[idx] = r[idx] if singleton == "reward" else 0.0
            continue
        x = r[idx]
        centred = x - x.mean()
        adv[idx] = centred / (x.std(ddof=1) + eps) if normalize_std else centred
    return adv


def u_hat(candidate_utilities: Sequence[float], aggregation: str = "max", empty: float = 0.0) -> float:
    """What the library promised for this task: max (or mean) utility over the retrieved candidates.

    No candidates (empty library, no-library mode) promise `empty` (default 0: any success is news).
    """
    if len(candidate_utilities) == 0:
        return empty
    u = np.asarray(candidate_utilities, dtype=np.float64)
    if aggregation == "max":
        return float(u.max())
    if aggregation == "mean":
        return float(u.mean())
    raise ValueError(f"u_hat aggregation must be 'max' or 'mean', got {aggregation!r}")


def selection_credit(chosen_utility: float | None, candidate_utilities: Sequence[float],
                     kind: str = "chosen_minus_mean") -> float:
    """Trend credit for query + re-rank [ours: the paper's exact ranking objective is not public]:

    chosen_minus_mean: u_chosen - mean(u over the k candidates)   (signed: better or worse than average)
    chosen_minus_max:  u_chosen - max(u over the k candidates)    (regret: 0 for the best, else negative)

    0 when nothing was chosen or there was nothing to choose between.
    """
    if chosen_utility is None or len(candidate_utilities) == 0:
        return 0.0
    u = np.asarray(candidate_utilities, dtype=np.float64)
    if kind == "chosen_minus_mean":
        return float(chosen_utility - u.mean())
    if kind == "chosen_minus_max":
        return float(chosen_utility - u.max())
    raise ValueError(f"selection credit kind must be 'chosen_minus_mean' or 'chosen_minus_max', got {kind!r}")


def distillation_credit(outcome: float, promised: float) -> float:
    """Variation credit (`first_order_diff`): r - u_hat."""
    return float(outcome - promised)


@dataclass(frozen=True)
class EpisodeCredit:
    """Per-episode advantages of each stage, plus the raw intrinsic terms for metrics."""

    utilization: float
    selection: float
    distillation: float
    r_sel: float
    r_dis: float

    def for_stage(self, stage: Stage) -> float:
        if stage.is_selection:
            return self.selection
        if stage is Stage.DISTILL:
            return self.distillation
        return self.utilization


@dataclass(frozen=True)
class CreditInputs:
    """What credit assignment needs from one episode (decoupled from `Episode` for testing)."""

    group_id: Hashable
    reward: float  # outcome - penalties: the GRPO signal
    outcome: float  # in [0, 1]
    candidate_utilities: tuple[float, ...]
    chosen_utility: float | None


@dataclass(frozen=True)
class CreditSettings:
    """How the one reward is split into the stages' advantages (`skill1.settings.credit_settings` reads it
    from the config)."""

    normalize_std: bool = True
    selection_on: bool = True
    distillation_on: bool = True
    lambda_rerank: float = 0.3
    lambda_distill: float = 0.3
    u_hat_aggregation: str = "max"
    selection_credit_type: str = "chosen_minus_mean"
    intrinsic_coefficient: float = 1.0
    intrinsic_group_norm: bool = False
    singleton_group: str = "zero"


def assign_credit(episodes: Sequence[CreditInputs], settings: CreditSettings = CreditSettings()) -> list[EpisodeCredit]:
    """Stage advantages: A + c * lambda * term, where term is r_sel / r_dis, group-centred and scaled
    like GRPO when `intrinsic_group_norm` [ours: the paper adds them raw, c = 1]."""
    s = settings
    groups = [e.group_id for e in episodes]
    adv = grpo_advantages([e.reward for e in episodes], groups, s.normalize_std, singleton=s.singleton_group)
    r_sel = [selection_credit(e.chosen_utility, e.candidate_utilities, s.selection_credit_type) for e in episodes]
    r_dis = [distillation_credit(e.outcome, u_hat(e.candidate_utilities, s.u_hat_aggregation)) for e in episodes]
    sel_term, dis_term = np.asarray(r_sel), np.asarray(r_dis)
    if s.intrinsic_group_norm:
        sel_term = grpo_advantages(r_sel, groups, normalize_std=True)
        dis_term = grpo_advantages(r_dis, groups, normalize_std=True)
    out = []
    for i, a in enumerate(adv):
        sel = s.intrinsic_coefficient * s.lambda_rerank * sel_term[i] if s.selection_on else 0.0
        dis = s.intrinsic_coefficient * s.lambda_distill * dis_term[i] if s.distillation_on else 0.0
        out.append(EpisodeCredit(utilization=float(a), selection=float(a + sel), distillation=float(a + dis),
                                 r_sel=r_sel[i], r_dis=r_dis[i]))
    return out
