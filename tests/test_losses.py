"""PPO-clip and k3 KL with numbers by hand, a cross-check on random inputs, and the loss mask."""

import math

import pytest
import torch

from skill1.algo.losses import gather_logprobs, kl_k3, ppo_clip_loss


def _one(ratio, adv, clip=0.2):
    old = torch.tensor([-1.0])
    out = ppo_clip_loss(old + math.log(ratio), old, torch.tensor([adv]), torch.ones(1), clip_eps=clip, kl_coef=0.0)
    return float(out.loss)


def test_clip_cases_by_hand():
    assert _one(1.1, 1.0) == pytest.approx(-1.1)  # inside the clip range
    assert _one(1.5, 1.0) == pytest.approx(-1.2)  # positive advantage: capped at 1 + eps
    assert _one(0.5, -1.0) == pytest.approx(0.8)  # negative advantage: floored at 1 - eps
    assert _one(0.5, 1.0) == pytest.approx(-0.5)  # pessimistic bound keeps the unclipped value


def test_k3_by_hand_and_nonnegative():
    # logp = 0, ref = log .5: d = -.6931; e^d - d - 1 = .5 + .6931 - 1 = .193147
    assert float(kl_k3(torch.tensor(0.0), torch.tensor(math.log(0.5)))) == pytest.approx(0.193147, abs=1e-6)
    x = torch.randn(1000)
    assert float(kl_k3(x, torch.randn(1000)).min()) >= 0


def test_token_mean_and_mask():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # ratio 1 everywhere: per-token loss -A; masked mean over 3 tokens = -(1 + 1 + 2) / 3
    assert float(ppo_clip_loss(logp, logp, adv, mask, kl_coef=0).loss) == pytest.approx(-4 / 3)
    # as one micro-batch of a 6-token mini-batch
    assert float(ppo_clip_loss(logp, logp, adv, mask, kl_coef=0, num_tokens=6).loss) == pytest.approx(-4 / 6)


def test_truncated_importance_weight():
    behaviour, prox = torch.tensor([-2.0]), torch.tensor([-1.0])  # w = e^1 = 2.718 → capped at 2
    out = ppo_clip_loss(prox, behaviour, torch.tensor([1.0]), torch.ones(1), proximal_logp=prox, is_cap=2.0,
                        kl_coef=0)
    assert float(out.loss) == pytest.approx(-2.0)
    assert out.is_weight_mean == pytest.approx(2.0)


def _reference_loss(logp, old, ref, adv, mask, eps, beta):
    total, count = 0.0, 0.0
    for lp, o, r, a, m in zip(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist()):
        if m == 0:
            continue
        ratio = math.exp(lp - o)
        clipped = min(max(ratio, 1 - eps), 1 + eps)
        pg = -min(ratio * a, clipped * a)
        kl = math.exp(r - lp) - (r - lp) - 1
        total += pg + beta * kl
        count += 1
    return total / count


def test_matches_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = 64
        logp, old, ref = (-(torch.rand(n, generator=g) * 3) for _ in range(3))
        adv = torch.randn(n, generator=g)
        mask = (torch.rand(n, generator=g) > 0.3).float()
        ours = ppo_clip_loss(logp, old, adv, mask, ref_logp=ref, clip_eps=0.2, kl_coef=0.05)
        assert float(ours.loss) == pytest.approx(_reference_loss(logp, old, ref, adv, mask, 0.2, 0.05), rel=1e-5)


def test_gather_logprobs_equals_log_softmax():
    logits = torch.randn(5, 11)
    tok = torch.randint(0, 11, (5,))
    expected = torch.log_softmax(logits / 0.7, -1)[torch.arange(5), tok]
    torch.testing.assert_close(gather_logprobs(logits, tok, 0.7), expected)
