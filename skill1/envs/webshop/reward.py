"""The original WebShop score of a purchase (web_agent_site/engine/goal.py::get_reward), as pure functions.

    score = (attribute matches + option matches + [price <= price_upper])
            / (len(goal attributes) + len(goal options) + 1) * r_type

- r_type (get_type_reward): 1.0; 0.5 when neither the scraping query, nor >= 2 levels of the
  "A › B › C" product category, nor more than 20% of the goal name's nouns match; 0.1 when under 10% of
  the nouns match; 0.0 when none do (an empty noun list counts as 20%).
- attributes (get_attribute_reward): a goal attribute matches a product attribute with fuzzy
  token-set score > 85, else when it appears verbatim in the title, bullet points or description.
- options (get_option_reward): each *purchased* option matches a goal option exactly (option "size") or
  with fuzzy score > 85 (others), after both sides are reduced to the first color name they contain;
  else when it appears in the title, bullet points or description.

Fuzzy scores are thefuzz's `token_set_ratio` (what the original calls): rapidfuzz's token-set ratio on
strings reduced to lower-case letters and digits, rounded to an integer; that is exactly thefuzz >= 0.20.

Nouns: the original tags the names with spaCy (en_core_web_lg). That is used when a spaCy English model
is installed (lg, else sm); otherwise a deterministic stand-in takes every alphabetic word of two or more
letters that is not an English function word. The backend used is recorded in every breakdown.

The original can exceed 1.0 in one corner (purchased options that are not asked for but appear in the
title count as matches); the raw value is kept in the breakdown and the score is clipped to [0, 1].
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from skill1.envs.webshop.data import Goal, Product

EXACT_MATCH_OPTS = ("size",)
FUZZY_THRESHOLD = 85  # a match scores strictly more than this
SPACY_MODELS = ("en_core_web_lg", "en_core_web_sm")

# web_agent_site/engine/normalize.py: first entry contained in an option value stands for it
COLOR_SET = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel "
    "camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry "
    "cream crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey "
    "heather indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight "
    "mint mocha multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow "
    "red rose royal rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal "
    "tiger turquoise violet walnut wheat white wine yellow").split()

_FUNCTION_WORDS = frozenset(
    "a an and or nor but the of for with without within in on at to from by as is are was were be been it its "
    "this that these those your you yours our ours we my me he she his her they them their up down out over "
    "under into onto off per than then so not no all any each both more most very can will just also only "
    "about after before between through during if while which who whom whose what when where why how".split())
_ASCII_DAMMIT = {i: None for i in range(128, 256)}  # thefuzz's force_ascii drops code points 128..255


def normalize_color(value: str) -> str:
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def _fuzz_process(s: str) -> str:
    return default_process(str(s).translate(_ASCII_DAMMIT))


def token_set_ratio(a: str, b: str) -> int:
    """thefuzz.fuzz.token_set_ratio(a, b) (full_process, force_ascii, rounded)."""
    return int(round(fuzz.token_set_ratio(_fuzz_process(a), _fuzz_process(b))))


def heuristic_nouns(text: str) -> list[str]:
    """Deterministic stand-in for spaCy's NOUN/PROPN tokens: alphabetic words, 2+ letters, no function words."""
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1 and w not in _FUNCTION_WORDS]


@functools.lru_cache(maxsize=1)
def _spacy():
    for name in SPACY_MODELS:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            import spacy

            return name, spacy.load(name, disable=["parser", "ner"])
        except (ImportError, OSError, ValueError):
            continue
    return None


def nouns_backend() -> str:
    model = _spacy()
    return f"spacy:{model[0]}" if model else "heuristic"


@functools.lru_cache(maxsize=65536)
def title_nouns(text: str) -> tuple[str, ...]:
    """goal.py: lower-cased tokens tagged NOUN or PROPN ("PNOUN" in the original is not a spaCy tag)."""
    model = _spacy()
    if model is None:
        return tuple(heuristic_nouns(text))
    return tuple(t.text.lower() for t in model[1](text) if t.pos_ in ("NOUN", "PROPN"))


Nouns = Callable[[str], "list[str] | tuple[str, ...]"]


@dataclass(frozen=True)
class TypeReward:
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float


@dataclass(frozen=True)
class RewardBreakdown:
    score: float  # in [0, 1]: what the environment pays
    raw_score: float  # the original formula before clipping
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    r_att: float
    num_attr_matches: int
    n_attrs: int
    r_option: float | None  # None: the goal asks for no options
    num_option_matches: int
    n_options: int
    r_price: bool | None  # None: no price bound
    price: float
    price_upper: float
    title_backend: str


def type_reward(product: Product, goal: Goal, nouns: Nouns | None = None) -> TypeReward:
    nouns = nouns or title_nouns
    query_match = product.query == goal.query
    bought = {x.strip() for x in product.product_category.split("›")}
    wanted = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(bought & wanted) >= 2
    bought_nouns, wanted_nouns = list(nouns(product.title)), list(nouns(goal.name))
    title_score = 0.2 if not wanted_nouns else len(set(bought_nouns) & set(wanted_nouns)) / len(wanted_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return TypeReward(r_type, query_match, category_match, title_score)


def _in_text(value: str, product: Product) -> bool:
    """The original's fallback: verbatim in the lower-cased title, bullet points or description."""
    return (value in product.title.lower() or value in " ".join(product.bullet_points).lower()
            or value in product.description.lower())


def attribute_reward(product: Product, goal: Goal) -> tuple[float, int]:
    matches = 0
    for wanted in goal.attributes:
        if any(token_set_ratio(have, wanted) > FUZZY_THRESHOLD for have in product.attributes) \
                or _in_text(wanted, product):
            matches += 1
    return (matches / len(goal.attributes) if goal.attributes else 0.0), matches


def option_matches(name: str, value: str, goal_values: list[str]) -> bool:
    """One purchased option against the goal's option values, both already color-normalized; no text fallback."""
    if name.lower() in EXACT_MATCH_OPTS:
        return value in goal_values
    return any(token_set_ratio(g, value) > FUZZY_THRESHOLD for g in goal_values)


def option_reward(product: Product, goal_values: list[str], purchased: Mapping[str, str]) -> tuple[float | None, int]:
    goal_values = [normalize_color(v) for v in goal_values]
    matches = 0
    for name, value in purchased.items():
        value = normalize_color(value)
        if option_matches(name, value, goal_values) or _in_text(value, product):
            matches += 1
    return (matches / len(goal_values) if goal_values else None), matches


def get_reward(product: Product, goal: Goal, price: float, options: Mapping[str, str],
               nouns: Nouns | None = None) -> RewardBreakdown:
    """Score buying `product` at `price` with `options` (option name -> value) against `goal`."""
    t = type_reward(product, goal, nouns)
    r_price = (price <= goal.price_upper) if goal.price_upper > 0 else None
    r_att, n_att = attribute_reward(product, goal)
    goal_values = goal.option_values
    r_option, n_opt = option_reward(product, goal_values, options)
    raw = (n_att + n_opt + int(bool(r_price))) / (len(goal.attributes) + len(goal_values) + 1) * t.r_type
    return RewardBreakdown(
        score=min(1.0, max(0.0, raw)), raw_score=raw, r_type=t.r_type, query_match=t.query_match,
        category_match=t.category_match, title_score=t.title_score, r_att=r_att, num_attr_matches=n_att,
        n_attrs=len(goal.attributes), r_option=r_option, num_option_matches=n_opt, n_options=len(goal_values),
        r_price=r_price, price=price, price_upper=goal.price_upper,
        title_backend="custom" if nouns else nouns_backend())
