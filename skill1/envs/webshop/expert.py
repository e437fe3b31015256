"""A scripted WebShop expert that knows the goal: find the goal product, pick the asked-for options, buy.

It asks the search engine what a search will list: search the instruction and page to the goal asin when it
is among the 50 hits, else go back and search the product title. Options: for each goal option value, the
product option value that the reward counts as a match (an exact value first, else the best fuzzy one), one
click per option group. On the original data this is not guaranteed to win (a search may miss the product,
an instruction may ask for what the product lacks); on the fixture it wins every goal.
"""

from __future__ import annotations

from skill1.envs.webshop.data import Goal, Product, load_data
from skill1.envs.webshop.env import BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PRODUCT_WINDOW
from skill1.envs.webshop.reward import normalize_color, option_matches, token_set_ratio
from skill1.envs.webshop.search import search_engine
from skill1.types import Task


def choose_options(product: Product, goal: Goal) -> dict[str, str]:
    """Option name -> value to click: per goal value, the best matching value of a not yet chosen group."""
    chosen: dict[str, str] = {}
    for wanted in goal.option_values:
        best: tuple[int, str, str] | None = None
        for name, values in product.options.items():
            if name in chosen:
                continue
            for value in values:
                if not option_matches(name, normalize_color(value), [normalize_color(wanted)]):
                    continue
                rank = 101 if value == wanted else token_set_ratio(wanted, value)
                if best is None or rank > best[0]:
                    best = (rank, name, value)
        if best is not None:
            chosen[best[1]] = best[2]
    return chosen


def expert_actions(task: Task, data_root: str | None = None) -> list[str]:
    """The expert's whole action sequence for `task`; it ends with Buy Now unless no search finds the product."""
    data = load_data(data_root)
    goal = data.goals[task.payload["goal_index"]]
    product = data.by_asin[goal.asin]
    engine = search_engine(data)
    actions: list[str] = []
    for query in (goal.instruction_text, product.title):
        if actions:
            actions.append(f"click[{BACK_TO_SEARCH.lower()}]")
        actions.append(f"search[{query}]")
        hits = engine.search(query.lower())  # what the results pages will list, in order
        if goal.asin in hits:
            actions += [f"click[{NEXT_PAGE.lower()}]"] * (hits.index(goal.asin) // PRODUCT_WINDOW)
            break
    else:
        return actions
    actions.append(f"click[{goal.asin.lower()}]")
    actions += [f"click[{value}]" for value in choose_options(product, goal).values()]
    actions.append(f"click[{BUY_NOW.lower()}]")
    return actions
