"""The searcher demonstrator, the demonstrations it yields, and the tiny policy built from them.

What makes learning possible on a laptop is checked here by hand: the searcher never uses what it has not
seen, skills that name where an object kind lives really help it (headroom only knowledge can close), every
demonstration parses with the real parsers, and the env tokenizer's tiny model loads through from_pretrained.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from skill1.agent import parsing
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.envs.builtin.searcher import search_actions, search_order
from skill1.envs.builtin.world import PRIORS, generate_world
from skill1.tiny_policy.warm_start import (DECISIONS, EPISODE_ROOM, advised_kind, decision, demo_candidates,
                                           demonstrations, found_kind_of, gist, write_skill)
from skill1.types import EpisodeSettings, Stage

SETTINGS = EpisodeSettings(use_library=True, enable_query_generation=True, enable_rerank=True,
                           enable_distillation=True, max_steps=8, history_length=2, max_skill_chars=1000,
                           max_new_tokens={s: 64 for s in Stage})
TASKS = HouseholdTaskSource().sample("eval", 300, seed=3)


def play(task, actions, max_steps=8):
    env = HouseholdEnv(max_steps=max_steps)
    result = env.reset(task)
    for a in actions:
        if result.done:
            break
        assert a in result.admissible_actions, (task.task_id, a)
        result = env.step(a)
    return env, result


def prior_kind(task) -> str:
    w = generate_world(task.payload["seed"], task.family)
    kinds = {r.kind for r in w.receptacles.values()}
    prior = {k: v for k, v in PRIORS[w.goal_kind].items() if k in kinds and k != w.target_kind}
    return max(prior, key=prior.get)


def test_the_searcher_takes_only_what_it_has_seen_and_searches_in_listed_order():
    for task in TASKS[:120]:
        actions = search_actions(task, limit=30).actions
        env = HouseholdEnv(max_steps=30)
        result = env.reset(task)
        for a in actions:
            if a.startswith("take "):
                src = a.split(" from ")[1]
                assert src in env.world.searched  # its contents were on screen before
            if env.world.holding is None and not a.startswith(("take", "open")):
                # unadvised, it explores (the env's walk to the next receptacle not visited yet), or goes
                # back for a goal object it saw before (pick two)
                assert a == "explore" == result.admissible_actions[0] or \
                    (a.startswith("go to ") and a[6:] in env.world.searched), (task.task_id, a)
            if env.world.holding is not None:
                assert a != "explore", (task.task_id, actions)  # a destination is named, never explored to
            result = env.step(a)
        assert result.won, task.task_id  # given the steps, it always finishes


def test_advice_is_followed_first_and_knowing_where_things_live_is_worth_many_points():
    blind = [play(t, search_actions(t).actions)[1].won for t in TASKS]
    advised = [play(t, search_actions(t, prior_kind(t)).actions)[1].won for t in TASKS]
    for t in TASKS[:50]:
        kind = prior_kind(t)
        first = search_actions(t, kind).actions[0]
        assert first.startswith(f"go to {kind} "), (t.task_id, first)
        assert search_order(generate_world(t.payload["seed"], t.family), kind)[0].startswith(kind)
    blind_rate, advised_rate = sum(blind) / len(blind), sum(advised) / len(advised)
    # headroom: a blind searcher succeeds sometimes, one that knows where kinds tend to be far more often
    assert 0.2 <= blind_rate <= 0.5 and advised_rate - blind_rate >= 0.25, (blind_rate, advised_rate)


def test_skills_round_trip_through_their_text():
    skill = write_skill("pick_heat_then_place", "egg", "fridge")
    assert skill.scenario == gist("pick_heat_then_place", "egg") == "put a hot egg"
    assert advised_kind(skill.strategy) == "fridge"
    assert advised_kind(write_skill("pick_and_place", "pen", None).strategy) is None
    assert advised_kind(None) is None
    acts = ["go to cabinet 1", "open cabinet 1", "go to fridge 1", "open fridge 1", "take egg 2 from fridge 1"]
    assert found_kind_of(acts, "egg") == "fridge" and found_kind_of(acts, "mug") is None


def test_demo_candidates_offer_one_skill_for_the_task_object():
    rng = random.Random(0)
    for task in TASKS[:40]:
        cands, right = demo_candidates(task, rng)
        obj = generate_world(task.payload["seed"], task.family).goal_kind
        assert len(cands) == 3 and cands[right].scenario == gist(task.family, obj)
        assert advised_kind(cands[right].strategy) in PRIORS[obj]


@pytest.fixture(scope="module")
def env_tokenizer():
    from skill1.models.env_tokenizer import train_env_tokenizer
    from skill1.tiny_policy.provision import env_corpus

    return train_env_tokenizer(env_corpus(SETTINGS, num_tasks=30), vocab_size=1024)


def test_every_demonstration_parses_with_the_real_parsers(env_tokenizer):
    tok = env_tokenizer
    demos = demonstrations(TASKS[:40], tok, SETTINGS, seed=0)
    assert {d.stage for d in demos} == set(Stage)
    for d in demos:
        text = tok.decode(d.response_ids, skip_special_tokens=True)
        assert d.response_ids[-1] == tok.eos_token_id
        if d.stage is Stage.QUERY:
            assert parsing.parse_query(text, "fallback")[1] is None
        elif d.stage is Stage.RERANK:
            assert parsing.parse_choice(text, 3)[1] is None
        elif d.stage is Stage.DISTILL:
            draft, why = parsing.parse_skill(text, 1000)
            assert why is None and draft.scenario and draft.strategy
        else:
            prompt = tok.decode(d.prompt_ids)
            listed = re.search(r"\nActions: \[(.*)\]\.", prompt).group(1)
            admissible = re.findall(r"'(.*?)'(?:, |$)", listed)
            action, why = parsing.parse_action(text, admissible)
            assert why is None, (text, admissible)


def test_recovery_demos_follow_the_kind_of_mistake_a_tiny_policy_makes(env_tokenizer):
    """An injected mistake is inadmissible, never a target, and is answered by the searcher's action; most are
    near misses of that very action (a wrong number) or visits to a kind the room lacks, the errors a greedy
    tiny policy repeats when it has never seen how to recover from them."""
    tok = env_tokenizer
    demos = demonstrations(TASKS[:90], tok, SETTINGS, seed=1, mistakes=0.5)
    recoveries = near = absent = 0
    for d in demos:
        if d.stage is not Stage.ACT:
            continue
        prompt = tok.decode(d.prompt_ids)
        last = re.findall(r"Did: (.*?)\n", prompt)
        if not last or not last[-1].endswith(" (invalid)"):
            continue
        tried = last[-1].removesuffix(" (invalid)")
        listed = re.findall(r"'(.*?)'(?:, |$)", re.search(r"\nActions: \[(.*)\]\.", prompt).group(1))
        target = parsing.parse_action(tok.decode(d.response_ids, skip_special_tokens=True), listed)[0]
        assert tried not in listed and target in listed and target != tried
        recoveries += 1
        near += re.sub(r"\d+", "#", tried) == re.sub(r"\d+", "#", target)
        # every receptacle the agent can reach or sees (now, or before an invalid action's "Nothing happens.")
        seen = " ".join([*listed, re.search(r"Now: (.*)", prompt)[1], *re.findall(r"Before: (.*?) Did:", prompt)])
        absent += tried.startswith("go to ") and tried.split()[2] not in seen
    assert recoveries >= 100
    assert near / recoveries > 0.25 and absent / recoveries > 0.05, (near, absent, recoveries)


def test_injected_mistakes_do_not_cut_the_searchers_plan_short(env_tokenizer):
    """With ~30% of acting steps an injected mistake (the default), the demos still teach the whole plan, in
    order: a mistake uses up the episode's room, not the env's max_steps, so the `take` and `move` at a plan's
    end are shown (before, 0.7^8: 6% of 8-step plans ran to their end)."""
    tok = env_tokenizer
    recoveries = 0
    for i, task in enumerate(TASKS[:30]):
        demos = demonstrations([task], tok, SETTINGS, seed=i, with_library=0.0, explore=0.0)
        acting = [d for d in demos if d.stage is Stage.ACT]
        taught = [re.search(r"<action>(.*)</action>", tok.decode(d.response_ids))[1] for d in acting]
        assert taught == search_actions(task, limit=SETTINGS.max_steps).actions, task.task_id
        recoveries += sum("(invalid)" in tok.decode(d.prompt_ids) for d in acting)
    assert recoveries >= 30  # mistakes were played, and answered


def test_acting_demos_are_drawn_by_decision():
    assert decision("<think>egg</think><action>take egg 1 from fridge 1</action>") == "take"
    assert decision("<think>microwave</think><action>heat egg 1 with microwave 1</action>") == "use"
    assert decision("<think>desklamp</think><action>use desklamp 1</action>") == "use"
    assert decision("<think>egg</think><action>explore</action>") == "explore"
    assert decision("no markup") == "use" and set(DECISIONS) >= {"explore", "open", "go", "take", "move"}


def test_the_demonstrations_think_what_they_are_after(env_tokenizer):
    """The think names the object until it is taken, then the appliance until it is used, then the target:
    each acting target's think is the kind its action is about."""
    tok = env_tokenizer
    checked = 0
    for d in demonstrations(TASKS[:90], tok, SETTINGS, seed=4, mistakes=0.0):
        if d.stage is not Stage.ACT:
            continue
        think, action = re.fullmatch(r"<think>(\w+)</think><action>(.*)</action>",
                                     tok.decode(d.response_ids, skip_special_tokens=True)).groups()
        verb, *rest = action.split()
        if verb == "take":
            assert think == rest[0], action  # take <obj> N from ...: the object sought
        elif verb in ("clean", "heat", "cool"):
            assert think == rest[3], action  # clean <obj> N with <appliance> M
        elif verb == "move":
            assert think == rest[3], action  # move <obj> N to <target> M
        elif verb == "use":
            assert think == "desklamp", action
        else:
            continue
        checked += 1
    assert checked >= 100


class _Stub:
    """A policy that always answers the same acting text (batched like a sampler)."""

    def __init__(self, text):
        self.text, self.calls = text, 0

    def generate(self, prompts, params, seeds=None, constraints=None):
        from skill1.types import Generated

        self.calls += 1
        return [Generated([], [], self.text) for _ in prompts]


def test_dagger_plays_the_policys_invalid_actions_and_teaches_the_searchers_next_one(env_tokenizer):
    tok = env_tokenizer
    plain = demonstrations(TASKS[:12], tok, SETTINGS, seed=2, mistakes=0.0)
    stuck = _Stub("<think>ok</think><action>go to the moon</action>")
    own = demonstrations(TASKS[:12], tok, SETTINGS, seed=2, mistakes=0.0, policy=stuck, batch_size=5)
    assert stuck.calls >= 12 * SETTINGS.max_steps / 5  # in lockstep, five episodes a call
    acts = [d for d in own if d.stage is Stage.ACT]
    # every acting prompt is answered by the searcher; the policy's invalid attempt is what was played, so
    # after an episode's first step each prompt shows it, and the searcher's first action stays the answer
    # (its invalid actions never reach the env, which would end the episode: the room for mistakes does)
    assert len(acts) == 12 * SETTINGS.max_steps * EPISODE_ROOM
    later = [tok.decode(d.prompt_ids) for d in acts if "Before:" in tok.decode(d.prompt_ids)]
    assert len(later) == 12 * (SETTINGS.max_steps * EPISODE_ROOM - 1)
    assert all("Did: go to the moon (invalid)" in p for p in later)
    firsts = {tok.decode(d.response_ids) for d in plain if d.stage is Stage.ACT and "Before:" not in tok.decode(d.prompt_ids)}
    assert {tok.decode(d.response_ids) for d in acts} == firsts
    # a policy whose actions parse changes nothing: the searcher's demonstrations, byte for byte
    fine = _Stub("<think>ok</think><action>look</action>")
    same = demonstrations(TASKS[:12], tok, SETTINGS, seed=2, mistakes=0.0, policy=fine)
    key = lambda d: (d.prompt_ids, d.response_ids)  # noqa: E731
    assert sorted(map(key, same)) == sorted(map(key, plain))


def test_head_dim_sets_the_number_of_heads(tmp_path):
    from skill1.config import ModelConfig
    from skill1.models.tiny import load_policy
    from skill1.tiny_policy.provision import ensure_policy

    cfg = ModelConfig(path=str(tmp_path / "tiny"), hidden_size=128, num_layers=1, head_dim=32, warm_start_steps=0,
                      tokenizer="qwen2.5")
    model, _ = load_policy(ensure_policy(cfg, settings=SETTINGS))
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    with pytest.raises(ValueError, match="model.head_dim"):
        ModelConfig(head_dim=48).validate()


def test_the_tiny_policy_with_the_env_tokenizer_loads_through_from_pretrained(tmp_path, env_tokenizer):
    from transformers import AutoTokenizer

    from skill1.config import ModelConfig
    from skill1.models.tiny import load_policy
    from skill1.tiny_policy.provision import ensure_policy

    cfg = ModelConfig(path=str(tmp_path / "tiny"), hidden_size=64, num_layers=1, warm_start_steps=3,
                      warm_start_batch=4, warm_start_dagger_steps=2, warm_start_dagger_tasks=3)
    path = ensure_policy(cfg, settings=SETTINGS)
    model, tok = load_policy(path)
    prov = json.loads((Path(path) / "skill1_provenance.json").read_text())
    assert prov["tokenizer"] == "env_bpe" and prov["warm_start_steps"] == 3 and prov["env_max_steps"] == 8
    # the DAgger round ran with the real sampler: a random policy's every action is invalid and recovered from
    assert prov["dagger_demos"] > 0 and prov["dagger_recoveries"] > 0
    assert model.config.vocab_size == len(tok) == prov["vocab"] < 1100
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) == (2, 0)
    assert model.generation_config.eos_token_id == [2, 0]
    again = AutoTokenizer.from_pretrained(path)
    chat = again.apply_chat_template([{"role": "user", "content": "go to fridge 1"}], tokenize=False,
                                     add_generation_prompt=True)
    assert chat == "<|im_start|>user\ngo to fridge 1<|im_end|>\n<|im_start|>assistant\n"  # no system block
    assert not list(tmp_path.glob(".tiny.tmp-*"))  # built beside, renamed into place
