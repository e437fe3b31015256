"""HF sampler: behaviour log-probs equal the learner's recomputation; weights arrive as one packet."""

import numpy as np
import pytest
import torch

from skill1.learner.batching import collate
from skill1.learner.forward import response_logprobs
from skill1.models.tiny import load_policy
from skill1.rollout.protocol import SamplingParams
from skill1.rollout.sampler import HFSampler, sample_next
from skill1.types import Stage, TrainSample
from skill1.weights.wire import load_packet, pack_state, unpack


@pytest.fixture(scope="module")
def sampler(small_model_dir):
    return HFSampler(small_model_dir, seed=0)


def _prompts(tok):
    texts = ["Your task is to: put a mug in cabinet.", "hi", "A much longer prompt " * 12]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                    add_generation_prompt=True)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_match_teacher_forced_recomputation(sampler, temperature):
    """Left padding, positions and the KV cache must give exactly what the learner computes."""
    prompts = _prompts(sampler.tokenizer)
    outs = sampler.generate(prompts, SamplingParams(temperature, 1.0, 12))
    samples = [TrainSample(p + o.response_ids, len(p), o.logprobs, 0.0, Stage.ACT) for p, o in zip(prompts, outs)]
    mb = collate(samples, sampler.tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed = response_logprobs(sampler.model, mb, temperature)
    np.testing.assert_allclose(recomputed.numpy(), mb.old_logprobs.numpy(), atol=2e-4)


def test_greedy_is_deterministic_and_stops_at_eos(sampler):
    prompts = _prompts(sampler.tokenizer)
    a = sampler.generate(prompts, SamplingParams(0.0, 1.0, 10))
    b = sampler.generate(prompts, SamplingParams(0.0, 1.0, 10))
    assert [x.response_ids for x in a] == [x.response_ids for x in b]
    eos = set(sampler.eos_ids.tolist())
    for out in a:
        assert len(out.response_ids) <= 10 and len(out.logprobs) == len(out.response_ids)
        assert not any(t in eos for t in out.response_ids[:-1])  # nothing after an eos


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, 1.0, 0.75, g)[0]) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.75; the tail is never drawn
    tok, lp = sample_next(logits, 1.0, 0.75, g)
    assert float(lp.exp()) == pytest.approx([0.625, 0.375][int(tok)], abs=1e-5)  # renormalised


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_packet_roundtrip(small_model_dir, dtype):
    model, _ = load_policy(small_model_dir, dtype=dtype)
    packet = pack_state(model, version=3)
    assert packet.flat.ndim == 1 and packet.num_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    for name, t in unpack(packet).items():
        assert torch.equal(t, dict(model.named_parameters())[name].detach())


def test_sampler_takes_new_weights_and_version(small_model_dir, sampler):
    other, _ = load_policy(small_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    sampler.load_weights(pack_state(other, version=7))
    assert sampler.version == 7
    for (n, p), (_, q) in zip(sampler.model.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(KeyError):
        bad = pack_state(other, 8)
        bad.names[0] = "nope"
        load_packet(sampler.model, bad)


def test_seeded_rows_draw_the_same_tokens_whatever_they_are_batched_with(sampler):
    """Per-request seeds: a sequence's sample depends on its seed, not on its batch-mates or their order."""
    p = _prompts(sampler.tokenizer)
    params = SamplingParams(1.0, 0.9, 12)
    together = sampler.generate(p, params, seeds=[11, 12, 13])
    reversed_ = sampler.generate(p[::-1], params, seeds=[13, 12, 11])[::-1]
    alone = sampler.generate(p[:1], params, seeds=[11])
    assert [o.response_ids for o in together] == [o.response_ids for o in reversed_]
    assert together[0].response_ids == alone[0].response_ids
    other = sampler.generate(p[:1], params, seeds=[99])
    assert other[0].response_ids != alone[0].response_ids  # the seed matters


def test_greedy_rows_are_the_same_alone_or_batched_with_much_longer_prompts(sampler):
    """Held-out evaluation is greedy and its batches form as episodes happen to be ready: a row's tokens must
    not depend on its batch-mates or on how far it is left-padded. (Its logits may differ in the last float
    bits, ~1e-7 in float32 here; a greedy token could flip only on a top-two tie that close.)"""
    p = _prompts(sampler.tokenizer)
    short = p[0]
    long_ = [short * 6, p[1] * 4, p[2] * 3]  # several times the width: the short row is mostly padding
    params = SamplingParams(0.0, 1.0, 16)
    alone = sampler.generate([short], params, seeds=[7])[0]
    for mates in ([long_[0]], long_, long_[::-1]):
        batched = sampler.generate([*mates[:1], short, *mates[1:]], params, seeds=[1, 7, 2, 3][:len(mates) + 1])[1]
        assert batched.response_ids == alone.response_ids
        torch.testing.assert_close(torch.tensor(batched.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens, logps = sample_next(torch.log(probs).expand(4000, 4), 1.0, 1.0, None, gens)
    freq = torch.bincount(tokens, minlength=4).float() / 4000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)
    torch.testing.assert_close(logps, torch.log(probs)[tokens])
    tokens, _ = sample_next(torch.log(probs).expand(400, 4), 1.0, 0.6, None, gens[:400])
    assert set(tokens.tolist()) <= {0, 1}  # top-p 0.6: only the two most likely tokens


@pytest.mark.parametrize("backend", ["hf", "scripted"])
def test_the_sampler_actor_holds_the_weights_whose_version_it_acknowledges(small_model_dir, backend):
    """SamplerHost, the sampler actor's body (called in-process here): the version it acknowledges comes with
    those weights, as its digest shows (the scripted backend keeps the packet it was handed)."""
    from skill1.rollout.host import SamplerHost
    from skill1.weights.wire import digest, flat_weights

    host = SamplerHost(backend, small_model_dir, "float32", 0)
    other, _ = load_policy(small_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    assert host.weights_digest() != digest(flat_weights(other))
    assert host.load_weights(pack_state(other, version=4)) == 4 == host.version()
    assert host.weights_digest() == digest(flat_weights(other))
