"""Credit assignment with numbers computed by hand, plus an independent cross-check."""

import math

import numpy as np
import pytest

from skill1.algo.advantages import (CreditInputs, CreditSettings, assign_credit, distillation_credit, grpo_advantages,
                                    selection_credit, u_hat)
from skill1.types import Stage


def test_grpo_one_group_by_hand():
    # mean 0.5, unbiased std sqrt(1/3): A = ±0.5 / 0.57735 = ±0.866025
    adv = grpo_advantages([1, 0, 0, 1], ["g"] * 4)
    np.testing.assert_allclose(adv, [0.866025, -0.866025, -0.866025, 0.866025], atol=1e-5)


def test_grpo_groups_are_independent_and_unnormalised_option():
    adv = grpo_advantages([1, 0, 0.5, 0.5, 2], ["a", "a", "b", "b", "c"], normalize_std=False)
    np.testing.assert_allclose(adv, [0.5, -0.5, 0.0, 0.0, 0.0])


def test_grpo_all_equal_group_is_zero_not_nan():
    adv = grpo_advantages([0.0, 0.0, 0.0], ["g"] * 3)
    assert np.all(adv == 0) and not np.any(np.isnan(adv))


def test_grpo_single_member_group_gets_zero():
    assert grpo_advantages([1.0], ["only"])[0] == 0.0


def test_u_hat_aggregations_and_empty():
    assert u_hat([0.2, 0.6, 0.4]) == pytest.approx(0.6)
    assert u_hat([0.2, 0.6, 0.4], "mean") == pytest.approx(0.4)
    assert u_hat([]) == 0.0
    with pytest.raises(ValueError, match="max"):
        u_hat([0.1], "median")


def test_selection_and_distillation_credit_by_hand():
    assert selection_credit(0.6, [0.2, 0.6, 0.4]) == pytest.approx(0.2)
    assert selection_credit(0.2, [0.2, 0.6, 0.4]) == pytest.approx(-0.2)
    assert selection_credit(None, [0.2]) == 0.0
    assert selection_credit(0.5, []) == 0.0
    assert distillation_credit(1.0, 0.6) == pytest.approx(0.4)
    assert distillation_credit(0.0, 0.6) == pytest.approx(-0.6)


def test_assign_credit_combines_terms_per_stage():
    eps = [CreditInputs("g", 1.0, 1.0, (0.2, 0.6, 0.4), 0.6), CreditInputs("g", 0.0, 0.0, (0.2, 0.6, 0.4), 0.2)]

    a = 0.5 / math.sqrt(0.5)
    c = assign_credit(eps, CreditSettings(lambda_rerank=0.3, lambda_distill=0.3))
    assert c[0].utilization == pytest.approx(a, abs=1e-5)
    assert c[0].selection == pytest.approx(a + 0.3 * 0.2, abs=1e-5)
    assert c[0].distillation == pytest.approx(a + 0.3 * 0.4, abs=1e-5)
    assert c[1].selection == pytest.approx(-a + 0.3 * -0.2, abs=1e-5)
    assert c[1].distillation == pytest.approx(-a + 0.3 * -0.6, abs=1e-5)
    assert c[0].for_stage(Stage.QUERY) == c[0].for_stage(Stage.RERANK) == c[0].selection
    assert c[0].for_stage(Stage.ACT) == c[0].utilization
    assert c[0].for_stage(Stage.DISTILL) == c[0].distillation


def test_credit_switches_off():
    eps = [CreditInputs("g", 1.0, 1.0, (0.2, 0.6), 0.6), CreditInputs("g", 0.0, 0.0, (0.2, 0.6), 0.2)]
    c = assign_credit(eps, CreditSettings(selection_on=False, distillation_on=False))
    assert all(x.selection == x.utilization == x.distillation for x in c)


def test_scripted_best_vs_worst_chooser_signs():
    """A chooser of the best-utility candidate gets positive selection credit, the worst negative;
    distillation credit follows the sign of r - u_hat."""
    cands = (0.1, 0.5, 0.9)
    best = assign_credit([CreditInputs("g", 0.0, 0.0, cands, max(cands))] * 2)[0]
    worst = assign_credit([CreditInputs("g", 0.0, 0.0, cands, min(cands))] * 2)[0]
    assert best.r_sel > 0 > worst.r_sel
    win = assign_credit([CreditInputs("h", 1.0, 1.0, cands, 0.9)])[0]
    lose = assign_credit([CreditInputs("h", 0.0, 0.0, cands, 0.9)])[0]
    assert win.r_dis > 0 > lose.r_dis


def _reference_grpo(rewards, groups, normalize):
    """Straightforward re-implementation from the formula, written independently of the module."""
    out = []
    for i, g in enumerate(groups):
        members = [rewards[j] for j in range(len(groups)) if groups[j] == g]
        if len(members) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        var = sum((m - mean) ** 2 for m in members) / (len(members) - 1)
        out.append((rewards[i] - mean) / (math.sqrt(var) + 1e-6) if normalize else rewards[i] - mean)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_grpo_matches_reference_on_random_inputs(normalize):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        groups = [f"g{int(x)}" for x in rng.integers(0, 5, size=n)]
        rewards = rng.choice([0.0, 0.5, 1.0, -0.3], size=n).tolist()
        np.testing.assert_allclose(grpo_advantages(rewards, groups, normalize), _reference_grpo(rewards, groups, normalize),
                                   atol=1e-9)


def test_singleton_group_switch():
    assert grpo_advantages([0.7], ["solo"], singleton="reward")[0] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        grpo_advantages([0.7], ["solo"], singleton="mean")


def test_selection_credit_regret_variant():
    assert selection_credit(0.6, [0.2, 0.6, 0.4], "chosen_minus_max") == 0.0
    assert selection_credit(0.2, [0.2, 0.6, 0.4], "chosen_minus_max") == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="chosen_minus_mean"):
        selection_credit(0.2, [0.2], "rank")


def test_intrinsic_coefficient_and_group_norm_by_hand():
    cands = (0.2, 0.6, 0.4)
    eps = [CreditInputs("g", 1.0, 1.0, cands, 0.6), CreditInputs("g", 1.0, 1.0, cands, 0.2)]
    # equal rewards: A = 0, so the stage advantages are the intrinsic terms alone
    c = assign_credit(eps, CreditSettings(intrinsic_coefficient=2.0, lambda_rerank=0.3))
    assert c[0].selection == pytest.approx(2.0 * 0.3 * 0.2) and c[1].selection == pytest.approx(2.0 * 0.3 * -0.2)
    # group norm: r_sel = [0.2, -0.2] → z-scores ±0.7071 (unbiased std 0.2828); r_dis equal → 0
    g = assign_credit(eps, CreditSettings(intrinsic_group_norm=True, lambda_rerank=0.3))
    assert g[0].selection == pytest.approx(0.3 * 0.70710, abs=1e-4) and g[1].selection == pytest.approx(-0.3 * 0.70710, abs=1e-4)
    assert g[0].distillation == 0.0 and g[0].r_sel == pytest.approx(0.2)  # raw terms still reported
