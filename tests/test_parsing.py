"""Every model output maps to a defined outcome."""

import pytest

from skill1.agent.parsing import parse_action, parse_choice, parse_query, parse_skill

ADMISSIBLE = ["go to fridge 1", "take apple 1 from countertop 1", "look"]


@pytest.mark.parametrize("text,expected,reason", [
    ("<think>x</think><action>go to fridge 1</action>", "go to fridge 1", None),
    ("<think></think><action>  Go   to FRIDGE 1 </action>", "go to fridge 1", None),
    ("<action>go to fridge 1</action>", None, "missing_think"),
    ("<think>x</think>go to fridge 1", None, "missing_tag"),
    ("<think>x</think><action>look</action><action>look</action>", None, "extra_tags"),
    ("<think>x</think><action>fly away</action>", None, "inadmissible"),
    ("\u0000\ufffd garbage", None, "missing_think"),
])
def test_parse_action(text, expected, reason):
    assert parse_action(text, ADMISSIBLE) == (expected, reason)


@pytest.mark.parametrize("text,expected", [
    ("<choice>2</choice>", (1, None)),
    ("<choice> 3 </choice>", (2, None)),
    ("<choice>4</choice>", (0, "unknown_id")),
    ("<choice>0</choice>", (0, "unknown_id")),
    ("<choice>two</choice>", (0, "not_a_number")),
    ("2", (0, "missing_tag")),
    ("<choice>1</choice><choice>2</choice>", (0, "extra_tags")),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, 3) == expected


def test_parse_query():
    assert parse_query("<query> heat a mug </query>", "task") == ("heat a mug", None)
    assert parse_query("nothing", "task") == ("task", "missing_tag")
    assert parse_query("<query>  </query>", "task") == ("task", "empty")
    assert parse_query("<query>" + "x" * 400 + "</query>", "task") == ("task", "too_long")


def test_parse_skill():
    draft, reason = parse_skill("<scenario>heat things</scenario><strategy>use the microwave</strategy>", 100)
    assert reason is None and draft.scenario == "heat things" and draft.strategy == "use the microwave"
    assert parse_skill("<strategy>x</strategy>", 100) == (None, "missing_scenario")
    assert parse_skill("<scenario>x</scenario>", 100) == (None, "missing_strategy")
    assert parse_skill("<scenario> </scenario><strategy>x</strategy>", 100) == (None, "empty_scenario")
    assert parse_skill("<scenario>a</scenario><strategy>b</strategy><scenario>c</scenario>", 100) == (None, "extra_tags")
    assert parse_skill("<scenario>a</scenario><strategy>" + "b" * 101 + "</strategy>", 100) == (None, "too_long")


@pytest.mark.parametrize("text, reason", [
    # the stored strategy: a second <strategy> opened inside the first
    ("<scenario>heat the plate</scenario><strategy>find the first object, it</scenario><strategy>find the desklamp"
     "</strategy>", "tag_in_field"),
    ("<scenario>a <think>b</scenario><strategy>c</strategy>", "tag_in_field"),
    ("<scenario>a</scenario><strategy>then <action>go to desk 1</action></strategy>", "tag_in_field"),
    ("<scenario>a\x00b</scenario><strategy>c</strategy>", "control_chars"),
    ("<scenario>a</scenario><strategy>c\x1b[31m red</strategy>", "control_chars"),
    ("<scenario>a</scenario><strategy>b\u202ec</strategy>", "control_chars"),
    ("sure! <scenario>a</scenario><strategy>c</strategy>", "text_outside_tags"),
    ("<scenario>a</scenario> then <strategy>c</strategy>", "text_outside_tags"),
    ("<scenario>a</scenario><strategy>c</strategy> go to desk 1", "text_outside_tags"),
    ("<strategy>c</strategy><scenario>a</scenario>", "text_outside_tags"),
])
def test_a_skill_with_markup_control_characters_or_stray_text_is_rejected_with_its_reason(text, reason):
    assert parse_skill(text, 1000) == (None, reason)


def test_a_skill_may_have_whitespace_around_and_inside_its_tags():
    draft, reason = parse_skill("\n <scenario> heat\tthings </scenario>\n<strategy>use the\nmicrowave</strategy>\n", 100)
    assert reason is None and (draft.scenario, draft.strategy) == ("heat things", "use the microwave")


def test_template_action_accepts_any_nonempty_argument():
    admissible = ["search[<query>]", "click[back to search]"]
    assert parse_action("<think>t</think><action>search[ red  shoes ]</action>", admissible) == ("search[ red shoes ]", None)
    assert parse_action("<think>t</think><action>Click[Back to Search]</action>", admissible) == ("click[back to search]", None)
    assert parse_action("<think>t</think><action>search[]</action>", admissible) == (None, "inadmissible")
    assert parse_action("<think>t</think><action>search[<query>]</action>", admissible)[0] == "search[<query>]"
    assert parse_action("<think>t</think><action>buy[x]</action>", admissible) == (None, "inadmissible")
    # without the template listed, a search is just an inadmissible action
    assert parse_action("<think>t</think><action>search[shoes]</action>", ["click[x]"]) == (None, "inadmissible")
