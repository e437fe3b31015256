"""Constrained acting (`rollout.constrain_actions`): the grammar, its token masks, and the sampler under it."""

import random

import numpy as np
import pytest
import torch

from skill1.agent.action_grammar import ActionGrammar, ActionTargets, parse_state
from skill1.agent.parsing import parse_action
from skill1.learner.batching import collate
from skill1.learner.forward import response_logprobs
from skill1.rollout.protocol import SamplingParams
from skill1.rollout.sampler import HFSampler
from skill1.types import Stage, TrainSample

ADMISSIBLE = ["go to shelf 1", "go to shelf 10", "take mug 1 from shelf 1", "look", "search[<query>]"]
TARGETS = ActionTargets.from_admissible(ADMISSIBLE)


def test_targets_split_literals_from_templates():
    assert TARGETS.literals == ("go to shelf 1", "go to shelf 10", "take mug 1 from shelf 1", "look")
    assert TARGETS.templates == ("search",)


@pytest.mark.parametrize("text", [
    "<think>mug</think><action>take mug 1 from shelf 1</action>",
    "<think></think><action>look</action>",
    "<think>x</think><action>search[red shoes]</action>",
    "<think>a > b</think><action>go to shelf 10</action>",
])
def test_every_sentence_is_complete_parses_and_all_its_prefixes_are_viable(text):
    assert parse_state(text, TARGETS).complete
    assert parse_action(text, ADMISSIBLE)[1] is None
    for k in range(len(text)):
        state = parse_state(text[:k], TARGETS)
        assert state.viable and not state.complete, text[:k]


@pytest.mark.parametrize("text", [
    "mug", "<thinking>", "<think>a<b</think>", "<think>x</think><action>go to shelf 2",
    "<think>x</think><action>take mug 2", "<think>x</think><action>search[]</action>",
    "<think>x</think><action>search[ ]</action>", "<think>x</think><action>search[a<b]</action>",
    "<think>x</think><action>look</action>x",
])
def test_text_that_left_the_grammar_is_dead(text):
    assert not parse_state(text, TARGETS).viable


def test_go_to_shelf_1_is_complete_and_still_a_prefix_of_shelf_10():
    """`go to shelf 1` then `</action>` ends; `go to shelf 1` then `0` goes on to another admissible action."""
    state = parse_state("<think>s</think><action>go to shelf 1", TARGETS)
    assert state.viable and not state.complete and set(state.literals) == {"</action>", "0</action>"}


PIECES = ["<", "think", ">", "<think>", "</", "think><", "action", "</think><action>", "mug", " ", "1", "0",
          "go", " to", " shelf", "shelf", "take", " from", "look", "</action>", "search[", "search", "[", "red",
          " shoes", "]", "]</action>", "a<b", "x", "k>", "s</think><action>go", "<|im_end|>", ">look"]
PIECES += [chr(c) for c in range(32, 127) if chr(c) not in PIECES]  # every character, as in a byte-level BPE
EOS = PIECES.index("<|im_end|>")


def _brute_force(grammar: ActionGrammar, text: str) -> torch.Tensor | None:
    """The definition: a token is allowed iff the text with it stays viable; EOS iff the text is complete."""
    state = parse_state(text, TARGETS)
    if not state.viable:
        return None
    mask = torch.zeros(len(PIECES), dtype=torch.bool)
    for i, piece in enumerate(PIECES):
        if i == EOS:
            mask[i] = state.complete
        else:
            mask[i] = not state.complete and parse_state(text + piece, TARGETS).viable
    return mask


def test_the_fast_mask_equals_the_definition_along_random_walks():
    grammar = ActionGrammar(list(PIECES), [EOS])
    rng = random.Random(0)
    ended = 0
    for _ in range(120):
        text = ""
        for _ in range(40):
            fast, slow = grammar.allowed(text, TARGETS), _brute_force(grammar, text)
            assert fast is not None and torch.equal(fast, slow), (text, fast, slow)
            choice = rng.choice(fast.nonzero().flatten().tolist())
            if choice == EOS:
                ended += 1
                assert parse_action(text, ADMISSIBLE)[1] is None, text
                break
            text += PIECES[choice]
    assert ended > 40  # the walks do finish, on admissible actions only


def test_no_mask_once_the_text_has_left_the_grammar():
    assert ActionGrammar(list(PIECES), [EOS]).allowed("mug", TARGETS) is None


@pytest.fixture(scope="module")
def sampler(small_model_dir):
    return HFSampler(small_model_dir, seed=0)


def _act_prompts(tok, n):
    texts = [f"Task: put a mug in cabinet {i}. Actions: {ADMISSIBLE}" for i in range(n)]
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                    add_generation_prompt=True)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_random_policy_under_the_grammar_writes_only_admissible_actions(sampler, temperature):
    """The untrained model almost never writes a valid action on its own; constrained, it always does, and the
    rows without a constraint in the same batch are left alone."""
    prompts = _act_prompts(sampler.tokenizer, 6)
    constraints = [TARGETS] * 5 + [None]
    outs = sampler.generate(prompts, SamplingParams(temperature, 1.0, 60), seeds=list(range(6)),
                            constraints=constraints)
    for out in outs[:5]:
        assert parse_action(out.text, ADMISSIBLE)[1] is None, out.text
        assert out.response_ids[-1] in sampler.eos_ids.tolist()
    free = sampler.generate(prompts[5:], SamplingParams(temperature, 1.0, 60), seeds=[5])
    assert outs[5].response_ids == free[0].response_ids


def test_constrained_logprobs_are_the_policys_own_as_the_learner_recomputes_them(sampler):
    """The behaviour log-probs of a constrained draw are the unmasked policy's (what the learner's ratio uses),
    not the renormalised masked distribution's: forced tokens show it as log-probs below 0."""
    prompts = _act_prompts(sampler.tokenizer, 4)
    outs = sampler.generate(prompts, SamplingParams(1.0, 1.0, 60), seeds=list(range(4)), constraints=[TARGETS] * 4)
    samples = [TrainSample(p + o.response_ids, len(p), o.logprobs, 0.0, Stage.ACT) for p, o in zip(prompts, outs)]
    mb = collate(samples, sampler.tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed = response_logprobs(sampler.model, mb, 1.0)
    np.testing.assert_allclose(recomputed.numpy(), mb.old_logprobs.numpy(), atol=2e-4)
    forced_eos = [o.logprobs[-1] for o in outs]  # after `</action>` the mask leaves EOS alone
    assert max(forced_eos) < -0.5
