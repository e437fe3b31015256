"""Learner: a DeepSpeed (ZeRO-2, gloo, CPU) step; micro-batching equals one batch; loss mask."""

import copy

import pytest
import torch

from skill1.algo.losses import gather_logprobs, ppo_clip_loss
from skill1.config import LearnerConfig
from skill1.learner.batching import collate, split_by_token_budget
from skill1.learner.forward import response_logprobs
from skill1.learner.learner import Learner
from skill1.models.tiny import load_policy
from skill1.types import Stage, TrainSample


def _samples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        plen, rlen = 5 + 3 * i, 2 + i % 3
        ids = torch.randint(0, 700, (plen + rlen,), generator=g).tolist()
        out.append(TrainSample(ids, plen, (-torch.rand(rlen, generator=g) * 5).tolist(),
                               float(torch.randn(1, generator=g)), Stage.ACT))
    return out


def test_split_by_token_budget_and_collate_positions():
    samples = _samples()
    groups = split_by_token_budget(samples, budget=30)
    assert sorted(map(id, sum(groups, []))) == sorted(map(id, samples))
    for grp in groups:
        assert len(grp) == 1 or max(len(s.input_ids) for s in grp) * len(grp) <= 30
    mb = collate(samples[:2], pad_id=0)
    s0 = samples[0]
    # the token at position t is predicted from position t - 1
    assert mb.cols[:2].tolist() == [s0.prompt_len - 1, s0.prompt_len]
    assert mb.targets[:2].tolist() == s0.input_ids[s0.prompt_len:s0.prompt_len + 2]
    with pytest.raises(ValueError, match="log-probs"):
        collate([TrainSample([1, 2, 3], 1, [0.0], 1.0, Stage.ACT)], 0)


def test_gradient_reaches_only_generated_tokens(small_model_dir):
    """Full-vocabulary logits: d loss / d logits is zero at every context position, non-zero where a
    generated token is predicted; and the efficient response-only path gives the same loss."""
    model, _ = load_policy(small_model_dir)
    mb = collate(_samples(3), 0)
    with torch.no_grad():  # on-policy (ratio 1): no token is clipped out of the gradient
        mb.old_logprobs = response_logprobs(model, mb)
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    logits.retain_grad()
    lp = gather_logprobs(logits[mb.rows, mb.cols], mb.targets)
    loss = ppo_clip_loss(lp, mb.old_logprobs, mb.advantages, torch.ones_like(lp), kl_coef=0).loss
    loss.backward()
    grad_rows = logits.grad.abs().sum(-1)  # [B, T]
    predicting = torch.zeros_like(grad_rows, dtype=torch.bool)
    predicting[mb.rows, mb.cols] = True
    assert torch.all(grad_rows[~predicting] == 0)
    assert torch.all(grad_rows[predicting] > 0)
    fast = ppo_clip_loss(response_logprobs(model, mb), mb.old_logprobs, mb.advantages, torch.ones_like(lp),
                         kl_coef=0).loss
    assert float(fast) == pytest.approx(float(loss), rel=1e-5)


def _cfg(**kw):
    base = dict(lr=1e-3, kl_coef=0.01, micro_batch_tokens=10_000, torch_threads=2)
    base.update(kw)
    return LearnerConfig(**base)


def test_deepspeed_cpu_step_with_micro_batches_equals_torch_single_batch(small_model_dir):
    samples = _samples(8)
    ds = Learner(small_model_dir, _cfg(backend="deepspeed", micro_batch_tokens=40), seed=0)
    before = copy.deepcopy(ds.model.state_dict())
    m_ds = ds.update(samples)
    assert ds.engine is not None and m_ds["learner/version"] == 1.0 and m_ds["learner/tokens"] > 0
    assert len(split_by_token_budget(samples, 40)) > 2  # the budget really split the mini-batch
    ref = Learner(small_model_dir, _cfg(backend="torch"), seed=0)
    ref.update(samples)
    changed = 0
    for name, p in ds.model.named_parameters():
        q = dict(ref.model.named_parameters())[name]
        torch.testing.assert_close(p.detach(), q.detach(), atol=2e-6, rtol=1e-4)
        changed += int(not torch.equal(p.detach(), before[name]))
    assert changed > 0
    packet = ds.get_weights()
    assert packet.version == 1 and len(packet.names) == len(list(ds.model.parameters()))


def test_proximal_log_probs_are_recomputed_when_async_or_sampled_by_vllm():
    from skill1.config import load_config, recompute_proximal

    assert not recompute_proximal(load_config(None, []), eta=0)  # sync, HF: the behaviour log-probs are ours
    assert recompute_proximal(load_config(None, []), eta=2)
    assert recompute_proximal(load_config(None, ["rollout.backend=vllm"]), eta=0)  # other kernels, other numerics
    assert not recompute_proximal(load_config(None, ["rollout.backend=vllm", "learner.recompute_proximal=false"]), 2)


def test_truncated_importance_weight_against_the_behaviour_policy():
    """Decoupled PPO: ratio against the proximal policy, weight exp(prox - behav) capped; hand-computed."""
    logp = torch.tensor([-1.0, -2.0, -0.5])
    behav = torch.tensor([-1.5, -1.0, -0.5])  # prox - behav = 0.5, -1.0, 0.0  ->  w = e^.5, e^-1, 1
    adv = torch.tensor([1.0, 1.0, -1.0])
    out = ppo_clip_loss(logp, behav, adv, torch.ones(3), proximal_logp=logp.clone(), kl_coef=0, is_cap=1.5)
    w = torch.tensor([1.5, float(torch.exp(torch.tensor(-1.0))), 1.0])
    assert out.is_weight_max == pytest.approx(float(torch.exp(torch.tensor(0.5))))
    assert out.is_truncated_frac == pytest.approx(1 / 3)  # e^0.5 = 1.65 > cap 1.5
    assert out.is_weight_mean == pytest.approx(float(w.mean()))
    # ratio = 1 at the proximal policy, so the loss is -mean(w * A)
    assert float(out.loss) == pytest.approx(float(-(w * adv).mean()))


def test_async_update_recomputes_proximal_logprobs_and_an_empty_update_is_a_version(small_model_dir):
    learner = Learner(small_model_dir, _cfg(backend="torch", is_cap=2.0), seed=0)
    samples = _samples(4)
    mb = collate(samples, learner.tokenizer.pad_token_id)
    with torch.no_grad():
        own = response_logprobs(learner.model, mb).tolist()
    # behaviour log-probs a known 0.3 below the learner's own: every weight is e^0.3 (< cap)
    offset, shifted = 0, []
    for s in samples:
        n = len(s.old_logprobs)
        shifted.append(TrainSample(s.input_ids, s.prompt_len, [x - 0.3 for x in own[offset:offset + n]],
                                   s.advantage, s.stage, policy_version=0))
        offset += n
    m = learner.update(shifted, recompute_proximal=True)
    assert m["learner/is_weight"] == pytest.approx(float(torch.exp(torch.tensor(0.3))), rel=1e-4)
    assert m["learner/is_truncated_frac"] == 0.0 and m["learner/version"] == 1.0
    # the sampler-vs-learner gap is logged: 0.3 a token, all of it on samples of the current weights (version 0)
    assert m["learner/logprob_gap"] == pytest.approx(0.3, abs=1e-4) == m["learner/logprob_gap_fresh"]
    assert m["learner/fresh_samples"] == 4.0
    m = learner.update(shifted)  # on-policy path: behaviour = proximal, weight 1
    assert m["learner/is_weight"] == 1.0 and m["learner/sample_staleness_mean"] == 1.0
    assert learner.update([])["learner/version"] == 3.0  # no samples is still a policy version


# --- a non-finite loss or gradient never reaches the weights ----------------------------------------------------------

def _nan_advantage(samples):
    return [TrainSample(s.input_ids, s.prompt_len, s.old_logprobs, float("nan"), s.stage) for s in samples]


def _weights(learner):
    return {k: v.detach().clone() for k, v in learner.model.named_parameters()}


def _assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _skips_nan_loss_and_inf_gradient_then_steps(learner):
    samples, before = _samples(4), _weights(learner)
    m = learner.update(_nan_advantage(samples))  # a NaN loss
    assert m["learner/skipped_nonfinite"] == 1.0 and m["learner/steps"] == 0.0
    _assert_same(_weights(learner), before)
    param = next(p for p in learner.model.parameters() if p.requires_grad)
    hook = param.register_hook(lambda g: g * float("inf"))  # a finite loss whose gradient overflows
    m = learner.update(samples)
    hook.remove()
    assert m["learner/skipped_nonfinite"] == 1.0 and learner.nonfinite_in_a_row == 2
    _assert_same(_weights(learner), before)
    m = learner.update(samples)  # a finite step: applied, finite (the moments were not poisoned), count reset
    assert m["learner/skipped_nonfinite"] == 0.0 and m["learner/steps"] == 1.0 and learner.nonfinite_in_a_row == 0
    after = _weights(learner)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not all(torch.equal(after[k], before[k]) for k in after)
    return samples, after


def test_torch_learner_skips_nonfinite_steps_and_n_in_a_row_stop_the_run(small_model_dir):
    from skill1.learner.learner import NonFiniteUpdates

    learner = Learner(small_model_dir, _cfg(backend="torch", max_nonfinite_skips=3), seed=0)
    samples, after = _skips_nan_loss_and_inf_gradient_then_steps(learner)
    learner.update(_nan_advantage(samples))
    learner.update(_nan_advantage(samples))
    with pytest.raises(NonFiniteUpdates, match=r"3 optimizer steps in a row .*learner\.max_nonfinite_skips=3"):
        learner.update(_nan_advantage(samples))
    _assert_same(_weights(learner), after)


@pytest.mark.parametrize("zero_stage", [2, 0])
def test_deepspeed_learner_skips_nonfinite_steps(small_model_dir, zero_stage):
    """ZeRO-1/2/3 skip an inf/NaN gradient norm inside DeepSpeed (a NaN loss goes in as NaN gradients); ZeRO-0
    steps a plain torch optimizer, so the learner checks the gradients itself."""
    _skips_nan_loss_and_inf_gradient_then_steps(Learner(small_model_dir, _cfg(backend="deepspeed",
                                                                              zero_stage=zero_stage), seed=0))
