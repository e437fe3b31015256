"""The select → utilize → distill state machine with scripted policies (no Ray, no model)."""

import random

import pytest
from helpers import drive

from skill1.agent import parsing
from skill1.agent.episode import Generate, Retrieve
from skill1.algo.advantages import assign_credit
from skill1.algo.batch import credit_inputs, episodes_to_samples
from skill1.config import load_config
from skill1.envs.builtin import HouseholdTaskSource, expert_actions
from skill1.settings import episode_settings
from skill1.types import Candidate, Stage

TASK = HouseholdTaskSource().sample("train", 6, seed=3)[2]
CANDS = [Candidate(f"s{i}", f"scenario {i}", f"strategy {i}", u, 1, 0.5, 0.5) for i, u in enumerate([0.2, 0.9, 0.4])]


def settings(*overrides):
    return episode_settings(load_config(None, list(overrides)), training=True)


def expert_policy(task, choice=2):
    plan = iter(expert_actions(task))

    def policy(req: Generate) -> str:
        return {Stage.QUERY: lambda: "<query>find it</query>", Stage.RERANK: lambda: f"<choice>{choice}</choice>",
                Stage.ACT: lambda: f"<think>go</think><action>{next(plan)}</action>",
                Stage.DISTILL: lambda: "<scenario>when asked</scenario><strategy>do it</strategy>"}[req.stage]()
    return policy


def test_expert_episode_records_every_stage(tokenizer):
    ep, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK), CANDS)
    assert ep.success and ep.outcome == 1.0 and ep.num_invalid_actions == 0
    stages = [s.stage for s in ep.segments]
    assert stages[:2] == [Stage.QUERY, Stage.RERANK] and stages[-1] is Stage.DISTILL
    assert stages.count(Stage.ACT) == len(expert_actions(TASK)) == ep.num_steps
    assert ep.chosen_skill_id == "s1" and ep.query == "find it"
    assert ep.draft is not None and ep.draft.strategy == "do it"
    for seg in ep.segments:
        assert seg.valid and len(seg.logprobs) == len(seg.response_ids) > 0 and seg.prompt_ids
    # the chosen skill's strategy is in the acting prompt (context, never trained)
    act = next(s for s in ep.segments if s.stage is Stage.ACT)
    assert "strategy 1" in tokenizer.decode(act.prompt_ids)


def test_train_samples_mask_prompts_and_carry_stage_advantages(tokenizer):
    ep, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK), CANDS)
    credit = assign_credit([credit_inputs(ep, 0.1)])[0]
    samples = episodes_to_samples([ep], [credit])
    assert len(samples) == len(ep.segments)
    for s, seg in zip(samples, ep.segments):
        assert s.input_ids == seg.prompt_ids + seg.response_ids and s.prompt_len == len(seg.prompt_ids)
        assert s.advantage == credit.for_stage(seg.stage)


def test_garbage_policy_never_crashes(tokenizer):
    rng = random.Random(0)
    alphabet = "<>/\\{}[]actionthink \u00e9\u4e2d\U0001F600\n\t0123456789"

    def garbage(req):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))

    ep, _ = drive(TASK, tokenizer, settings("env.max_steps=5"), garbage, CANDS)
    assert not ep.success and ep.num_steps == 5 and ep.num_invalid_actions == 5
    assert ep.draft is None and ep.draft_rejection is not None
    assert sum(ep.parse_errors.values()) >= 6  # 5 actions + the skill (+ query/rerank)
    assert ep.chosen_skill_id == "s0"  # unparseable choice falls back to the top-scored candidate


def test_the_next_prompt_shows_what_an_invalid_action_tried(tokenizer):
    tries = iter(["<think>x</think><action>fly to the moon</action>", "no tags at all\x1b[31m", "<think></think>"])

    def policy(req):
        return next(tries, "<think>ok</think><action>look</action>") if req.stage is Stage.ACT else "<query>q</query>"

    ep, requests = drive(TASK, tokenizer, settings("env.max_steps=4", "env.history_length=1"), policy, CANDS)
    acts = [tokenizer.decode(r.prompt_ids) for r in requests if getattr(r, "stage", None) is Stage.ACT]
    assert "fly to the moon (invalid)" in acts[1] and "no tags at all" in acts[2] and "(invalid)" in acts[2]
    assert "\x1b" not in acts[2] and "nothing (invalid)" in acts[3]  # no control characters; no text at all
    assert ep.num_invalid_actions == 3
    assert parsing.attempted_action("<action>go to a</action><action>b</action>") == "go to a"
    assert parsing.attempted_action("x" * 100) == "x" * 60 and parsing.attempted_action("<think></think>") == "nothing"


def test_invalid_choice_falls_back_and_is_recorded(tokenizer):
    ep, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK, choice=7), CANDS)
    rerank = next(s for s in ep.segments if s.stage is Stage.RERANK)
    assert not rerank.valid and ep.parse_errors == {"rerank/unknown_id": 1} and ep.chosen_skill_id == "s0"


@pytest.mark.parametrize("override,absent", [
    ("algorithm.enable_query_generation=false", Stage.QUERY),
    ("algorithm.enable_rerank=false", Stage.RERANK),
    ("algorithm.enable_distillation=false", Stage.DISTILL),
])
def test_each_stage_has_a_switch(tokenizer, override, absent):
    ep, _ = drive(TASK, tokenizer, settings(override), expert_policy(TASK), CANDS)
    assert absent not in {s.stage for s in ep.segments} and ep.success
    if absent is Stage.QUERY:
        assert ep.query == TASK.description
    if absent is Stage.RERANK:
        assert ep.chosen_skill_id == "s0"


def test_no_library_mode_never_retrieves(tokenizer):
    ep, requests = drive(TASK, tokenizer, settings("algorithm.preset=no_library"), expert_policy(TASK), CANDS)
    assert not any(isinstance(r, Retrieve) for r in requests)
    assert ep.candidates == [] and ep.chosen_skill_id is None
    assert {s.stage for s in ep.segments} == {Stage.ACT, Stage.DISTILL}


def test_empty_library_skips_rerank(tokenizer):
    ep, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK), candidates=[])
    assert Stage.RERANK not in {s.stage for s in ep.segments} and ep.chosen_skill_id is None


def test_scripted_best_and_worst_choosers_get_opposite_selection_credit(tokenizer):
    """Through the whole path episode → credit inputs → credit: picking the best-utility candidate
    earns positive selection credit, the worst negative; distillation credit follows r − û."""
    best, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK, choice=2), CANDS)  # u = 0.9
    worst, _ = drive(TASK, tokenizer, settings(), expert_policy(TASK, choice=1), CANDS)  # u = 0.2
    cb, cw = assign_credit([credit_inputs(best, 0.1), credit_inputs(worst, 0.1)])
    assert cb.r_sel == pytest.approx(0.9 - 0.5) and cw.r_sel == pytest.approx(0.2 - 0.5)
    assert cb.selection > cb.utilization and cw.selection < cw.utilization
    assert cb.r_dis == pytest.approx(1.0 - 0.9)  # won: beat the library's promise of 0.9


@pytest.mark.parametrize("constrain", [False, True])
def test_only_acting_requests_carry_the_admissible_actions_and_only_when_asked(tokenizer, constrain):
    ep, requests = drive(TASK, tokenizer, settings(f"rollout.constrain_actions={str(constrain).lower()}"),
                         expert_policy(TASK), CANDS)
    assert ep.success
    gens = [r for r in requests if isinstance(r, Generate)]
    acts = [r for r in gens if r.stage is Stage.ACT]
    assert len(acts) == len(expert_actions(TASK))
    for r, action in zip(acts, expert_actions(TASK)):  # each step's constraint lists what the env admits then
        assert (action in r.constraint.literals) if constrain else r.constraint is None
    assert all(r.constraint is None for r in gens if r.stage is not Stage.ACT)
