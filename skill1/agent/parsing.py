"""Strict, total parsing of model output: every input maps to a defined outcome, nothing raises.

Each parser returns the parsed value (or a fallback) and a reason string that is None when the output
was valid; the reasons are counted in metrics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from skill1.algo.skill_intake import field_fault
from skill1.types import SkillDraft

MAX_QUERY_CHARS = 300


def _tagged(text: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)


ACTION_TEMPLATE = re.compile(r"^(\w+)\[<[^>]*>\]$")  # `verb[<what>]`: a free-text argument


def normalise_action(text: str) -> str:
    return " ".join(text.strip().lower().split())


def parse_query(text: str, fallback: str) -> tuple[str, str | None]:
    """`<query>q</query>` → q. Otherwise the raw task text is the query (recorded as invalid)."""
    found = _tagged(text, "query")
    if len(found) != 1:
        return fallback, "missing_tag" if not found else "extra_tags"
    query = " ".join(found[0].split())
    if not query:
        return fallback, "empty"
    if len(query) > MAX_QUERY_CHARS:
        return fallback, "too_long"
    return query, None


def parse_choice(text: str, num_candidates: int) -> tuple[int, str | None]:
    """`<choice>N</choice>` (1-based) → index. Otherwise the top-scored candidate (index 0), invalid."""
    found = _tagged(text, "choice")
    if len(found) != 1:
        return 0, "missing_tag" if not found else "extra_tags"
    value = found[0].strip()
    if not value.isdigit():
        return 0, "not_a_number"
    index = int(value) - 1
    if not 0 <= index < num_candidates:
        return 0, "unknown_id"
    return index, None


def parse_action(text: str, admissible: Sequence[str]) -> tuple[str | None, str | None]:
    """verl-agent convention: `<think>…</think>` then exactly one `<action>a</action>`, a admissible."""
    if "<think>" not in text or "</think>" not in text:
        return None, "missing_think"
    found = _tagged(text, "action")
    if len(found) != 1:
        return None, "missing_tag" if not found else "extra_tags"
    action = normalise_action(found[0])
    by_norm = {normalise_action(a): a for a in admissible if not ACTION_TEMPLATE.match(a)}
    if action in by_norm:
        return by_norm[action], None
    # a free-text action is listed as a template, e.g. WebShop's `search[<query>]`: any non-empty argument
    written = " ".join(found[0].split())
    for a in admissible:
        template = ACTION_TEMPLATE.match(a)
        if template and action.startswith(template.group(1).lower() + "[") and action.endswith("]") \
                and written[len(template.group(1)) + 1:-1].strip():
            return written, None
    return None, "inadmissible"


def first_action(text: str) -> str | None:
    """The first `<action>` content of an output, stripped, or None: what it tried, valid or not."""
    found = _tagged(text, "action")
    return found[0].strip() if found else None


def attempted_action(text: str, max_chars: int = 60) -> str:
    """What an invalid acting output tried to do, for the history: the first `<action>` content, else the text
    (one line, at most `max_chars`, no tags), else "nothing"."""
    found = first_action(text)
    raw = found if found is not None else re.sub(r"</?\w+>", " ", text)
    raw = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", raw).split())[:max_chars]  # no control characters
    return raw or "nothing"


SKILL_FORM = re.compile(r"\s*<scenario>(.*?)</scenario>\s*<strategy>(.*?)</strategy>\s*", re.DOTALL)


def parse_skill(text: str, max_chars: int) -> tuple[SkillDraft | None, str | None]:
    """Exactly `<scenario>…</scenario><strategy>…</strategy>` (whitespace around and between only), both
    non-empty, within `max_chars` each, neither holding a tag of ours or a control character
    (`skill_intake.field_fault`): what is stored is exactly what the policy wrote in each field."""
    scenarios, strategies = _tagged(text, "scenario"), _tagged(text, "strategy")
    if not scenarios:
        return None, "missing_scenario"
    if not strategies:
        return None, "missing_strategy"
    if len(scenarios) > 1 or len(strategies) > 1:
        return None, "extra_tags"
    form = SKILL_FORM.fullmatch(text)
    if form is None:
        return None, "text_outside_tags"  # text before, between or after the two, or the strategy first
    fault = field_fault(form.group(1)) or field_fault(form.group(2))
    if fault:
        return None, fault  # e.g. `<strategy>… it</scenario><strategy>…` written into one field
    scenario, strategy = " ".join(form.group(1).split()), " ".join(form.group(2).split())
    if not scenario:
        return None, "empty_scenario"
    if not strategy:
        return None, "empty_strategy"
    if len(scenario) > max_chars or len(strategy) > max_chars:
        return None, "too_long"
    return SkillDraft(scenario=scenario, strategy=strategy), None
