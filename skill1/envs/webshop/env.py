"""WebShop's text mode (web_agent_site/envs/web_agent_text_env.py, observation_mode="text") without a server.

Pages and navigation follow SimServer.receive: search page -> results (10 per page, "Next >" always shown,
"< Prev" from page 2) -> item page (option values, Description / Features / Reviews, Buy Now) -> sub-pages
("< Prev" back to the item). "Back to Search" everywhere. An observation is the page's visible text
elements joined with " [SEP] ", as the original's `text` mode renders its templates. Actions are the
original's: `search[<query>]` on the search page only (the original's has_search_bar), and `click[x]` for
each clickable x, lower-cased as the original lists them (option values are lower-case already).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from skill1.envs.base import StepResult
from skill1.envs.webshop.data import Goal, Product, WebshopData, load_data
from skill1.envs.webshop.reward import get_reward
from skill1.envs.webshop.search import SearchEngine, search_engine
from skill1.types import Task

DEFAULT_MAX_STEPS = 15
PRODUCT_WINDOW = 10  # engine.py: results per page
SEARCH_ACTION = "search[<query>]"  # a template: the agent writes the query
BACK_TO_SEARCH, NEXT_PAGE, PREV_PAGE, BUY_NOW = "Back to Search", "Next >", "< Prev", "Buy Now"
SUB_PAGES = ("Description", "Features", "Reviews")  # "Attributes" only with the original's show_attrs (off)
INVALID = "Invalid action."
SEP = " [SEP] "
_ACTION = re.compile(r"(\w+)\[(.*)\]", re.DOTALL)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class _Clickable(NamedTuple):
    text: str  # as listed in `click[...]`: lower-cased button / asin text, or the option value
    kind: str  # button | product | option
    target: str  # the button's label, the asin, or the option's name


@dataclass
class _Session:
    page: str = "search"  # search | results | item | sub | done
    results: list[str] = field(default_factory=list)  # asins of the last search, best first
    page_no: int = 1
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # option name -> chosen value
    sub_page: str = ""


class WebshopEnv:
    """One WebShop episode (implements `TextEnv`). Products, goals and the index are shared per process."""

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, data_root: str | None = None):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.data: WebshopData = load_data(data_root)
        self.engine: SearchEngine = search_engine(self.data)
        self.task: Task | None = None
        self.goal: Goal | None = None
        self.s = _Session()
        self.steps = 0
        self.done = False
        self._clickables: dict[str, _Clickable] = {}  # whitespace/case-normalized text -> clickable

    # -- episode ------------------------------------------------------------------------------------

    def reset(self, task: Task) -> StepResult:
        index = task.payload.get("goal_index")
        if not isinstance(index, int) or not 0 <= index < len(self.data.goals):
            raise ValueError(f"webshop task {task.task_id}: goal_index must be an int in "
                             f"[0, {len(self.data.goals)}), got {index!r}")
        self.task, self.goal = task, self.data.goals[index]
        self.s, self.steps, self.done = _Session(), 0, False
        return self._result(self._render())

    def step(self, action: str) -> StepResult:
        if self.goal is None:
            raise RuntimeError("step() before reset()")
        if self.done:
            raise RuntimeError("step() after the episode is done; call reset()")
        self.steps += 1
        extra: dict = {}
        m = _ACTION.fullmatch(action.strip())
        verb, arg = (m.group(1).lower(), m.group(2)) if m else ("", "")
        if verb == "search" and self.s.page == "search" and arg.strip():
            self._search(arg)
            obs = self._render()
        elif verb == "click" and _norm(arg) in self._clickables:
            clicked = self._clickables[_norm(arg)]
            if clicked.kind == "button" and clicked.target == BUY_NOW:
                obs, extra = self._buy()
            else:
                self._click(clicked)
                obs = self._render()
        else:
            obs = INVALID  # nothing changes; the admissible actions stay those of the current page
        reward = extra.get("score", 0.0)
        if not self.done and self.steps >= self.max_steps:
            self.done = True
            extra["truncated"] = True
        return self._result(obs, reward=reward, won=reward == 1.0, extra=extra)

    # -- transitions (SimServer.receive) --------------------------------------------------------------

    def _search(self, text: str) -> None:
        # the original lower-cases the argument (and splits it into keywords that it joins again)
        self.s = _Session(page="results", results=self.engine.search(text.lower()))

    def _click(self, c: _Clickable) -> None:
        # routed by the clicked text first, as SimServer.receive does (an option named "description" opens
        # the description), then by what was clicked
        s, name = self.s, _norm(c.text)
        if name == BACK_TO_SEARCH.lower():
            self.s = _Session()
        elif name == NEXT_PAGE.lower() and s.page == "results":
            s.page_no += 1
        elif name == PREV_PAGE.lower() and s.page == "results":
            s.page_no -= 1
        elif name == PREV_PAGE.lower() and s.page == "sub":
            s.page = "item"
        elif name == PREV_PAGE.lower() and s.page == "item":  # back to the results page it came from
            s.page, s.asin, s.options = "results", None, {}
        elif name in (p.lower() for p in SUB_PAGES):
            s.page, s.sub_page = "sub", next(p for p in SUB_PAGES if p.lower() == name)
        elif c.kind == "product":
            s.page, s.asin, s.options = "item", c.target, {}
        elif c.kind == "option":
            s.options[c.target] = c.text

    def _buy(self) -> tuple[str, dict]:
        product = self._product()
        b = get_reward(product, self.goal, self.data.prices[product.asin], dict(self.s.options))
        self.s.page, self.done = "done", True
        obs = SEP.join(["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(b.score)])
        return obs, {"score": b.score, "reward_breakdown": asdict(b), "purchased_asin": product.asin,
                     "purchased_options": dict(self.s.options)}

    # -- rendering (the templates' visible text, in document order) ------------------------------------

    def _product(self) -> Product:
        return self.data.by_asin[self.s.asin]

    def _render(self) -> str:
        """Builds the observation and, alongside, the clickables in the order the original lists them."""
        s, goal = self.s, self.goal
        head = ["Instruction:", goal.instruction_text]
        buttons: list[str] = []
        clickables: dict[str, _Clickable] = {}
        if s.page == "search":
            texts = ["WebShop", *head, "Search"]
        elif s.page == "results":
            shown = s.results[(s.page_no - 1) * PRODUCT_WINDOW: s.page_no * PRODUCT_WINDOW]
            buttons = [BACK_TO_SEARCH, *([PREV_PAGE] if s.page_no > 1 else []), NEXT_PAGE]
            texts = [*head, BACK_TO_SEARCH, f"Page {s.page_no} (Total results: {len(s.results)})", *buttons[1:]]
            for b in buttons:
                clickables[_norm(b)] = _Clickable(b.lower(), "button", b)
            for asin in shown:
                p = self.data.by_asin[asin]
                texts += [p.asin, p.title, p.price_tag]
                clickables[_norm(asin)] = _Clickable(asin.lower(), "product", asin)
        elif s.page == "item":
            p = self._product()
            buttons = [BACK_TO_SEARCH, PREV_PAGE, *SUB_PAGES, BUY_NOW]
            texts = [*head, BACK_TO_SEARCH, PREV_PAGE]
            for name, values in p.options.items():
                texts += [name, *values]
            texts += [p.title, f"Price: {p.price_tag}", f"Rating: {p.rating}", *SUB_PAGES, BUY_NOW]
            for b in buttons:
                clickables[_norm(b)] = _Clickable(b.lower(), "button", b)
            for name, values in p.options.items():  # radio inputs come after buttons; a repeated value: last wins
                for v in values:
                    clickables[_norm(v)] = _Clickable(v, "option", name)
        else:  # sub page
            p = self._product()
            texts = [*head, BACK_TO_SEARCH, PREV_PAGE]
            if s.sub_page == "Description":
                texts.append(p.description)
            elif s.sub_page == "Features":
                texts += list(p.bullet_points)
            else:
                for r in p.reviews:
                    texts += [f'"{r.title}"', str(r.score), r.body]
            clickables = {_norm(b): _Clickable(b.lower(), "button", b) for b in (BACK_TO_SEARCH, PREV_PAGE)}
        self._clickables = clickables
        return SEP.join(t.strip() for t in texts if t and t.strip())

    def admissible_actions(self) -> list[str]:
        if self.done:
            return []
        if self.s.page == "search":
            return [SEARCH_ACTION]
        return [f"click[{c.text}]" for c in self._clickables.values()]

    def _result(self, obs: str, reward: float = 0.0, won: bool = False, extra: dict | None = None) -> StepResult:
        info = {"task_id": self.task.task_id, "family": self.task.family, "steps": self.steps, "page": self.s.page,
                **(extra or {})}
        return StepResult(obs, self.admissible_actions(), reward=reward, done=self.done, won=won, info=info)
