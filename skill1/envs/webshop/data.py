"""Load the original WebShop data files unchanged and build the goal list the original text env uses.

Files, in one folder (`data_root`, else $WEBSHOP_DATA):
  items_shuffle_1000.json + items_ins_v2_1000.json   (the original's default, `setup.sh -d small`)
  or items_shuffle.json + items_ins_v2.json          (`setup.sh -d all`)
  items_human_ins.json                               (human instructions: the goals)
  reviews.json                                       (optional; absent from setup.sh, so reviews are empty)

Product cleaning follows `web_agent_site/engine/engine.py::load_products`, goals follow
`engine/goal.py::get_human_goals`, and the goal order follows `SimServer.__init__`'s
`random.seed(233); random.shuffle(goals)`, so goal index i here is goal index i of the original.

One deliberate difference: the original draws ranged prices and each goal's price bound from Python's
global RNG without seeding it first, so they change from process to process. Here they come from
`random.Random(PRICE_SEED)` in the original's order (all product prices, then one bound per goal): the same
values the original produces after `random.seed(PRICE_SEED)`, and identical in every pool process.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from skill1.envs.base import EnvDataError

ENV_VAR = "WEBSHOP_DATA"
PRODUCT_SETS = (("items_shuffle_1000.json", "items_ins_v2_1000.json"), ("items_shuffle.json", "items_ins_v2.json"))
HUMAN_FILE = "items_human_ins.json"
REVIEWS_FILE = "reviews.json"
PRICE_SEED = 0  # see the module docstring
GOAL_SHUFFLE_SEED = 233  # SimServer: random.seed(233); random.shuffle(self.goals)
PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # goal.py: candidate price bounds $10 .. $990
NO_PRICE_BOUND = 1000000  # goal.py: bound when fewer than two candidates lie above the price
DEFAULT_PRICE = 100.0  # engine.py: products without pricing cost $100

_WHERE = ("get it with the WebShop repo's setup.sh (Google Drive: items_shuffle_1000.json, items_ins_v2_1000.json, "
          "items_human_ins.json) and point env.data_path or $WEBSHOP_DATA at that folder")


class WebshopDataError(EnvDataError):
    """A WebShop data file is missing or malformed; the message is one line that says how to fix it."""


@dataclass(frozen=True)
class Review:
    title: str
    score: int | float | str
    body: str


@dataclass(frozen=True)
class Product:
    """One product after the original's cleaning (field comments give the original's key)."""

    asin: str
    title: str  # Title (= name)
    category: str  # category: the top-level one ("beauty", "electronics", ...)
    query: str  # query, lower-cased and stripped
    product_category: str  # product_category: "A › B › C" breadcrumb
    description: str  # Description (= full_description)
    bullet_points: tuple[str, ...]  # BulletPoints (= small_description)
    attributes: tuple[str, ...]  # Attributes, from the attributes file; ("DUMMY_ATTR",) when absent
    options: dict[str, list[str]]  # options: lower-cased name -> cleaned values, in file order
    option_to_image: dict[str, str | None]
    pricing: tuple[float, ...]  # one price or a (low, high) range
    price_tag: str  # Price as shown: "$12.99" or "$12.99 to $15.99"
    rating: str | float = "N.A."
    reviews: tuple[Review, ...] = ()
    main_image: str | None = None


@dataclass(frozen=True)
class Goal:
    """One human goal, with the original goal dict's keys."""

    asin: str
    category: str
    query: str
    name: str
    product_category: str
    instruction_text: str
    attributes: tuple[str, ...]
    price_upper: float
    goal_options: list[str] | dict[str, str]  # as in the file: usually a list of option values
    weight: float = 1.0

    @property
    def option_values(self) -> list[str]:
        return list(self.goal_options.values()) if isinstance(self.goal_options, dict) else list(self.goal_options)


@dataclass
class WebshopData:
    root: str
    files: dict[str, str]  # role -> path actually read
    products: list[Product]
    by_asin: dict[str, Product]
    prices: dict[str, float]  # the price a purchase is charged (a draw inside a range)
    goals: list[Goal] = field(default_factory=list)  # shuffled: goal index i is the original's goal i
    skipped_instructions: int = 0  # human instructions without attributes (the original skips them too)
    key: tuple = ()  # the files' identity (path, mtime, size): what per-process caches are keyed by


def resolve_data_root(data_root: str | None = None) -> str:
    """Explicit `data_root` > $WEBSHOP_DATA > WebshopDataError."""
    root = data_root or os.environ.get(ENV_VAR)
    if not root:
        raise WebshopDataError(f"WebShop data: no data folder given (env.data_path or ${ENV_VAR}); {_WHERE}")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise WebshopDataError(f"WebShop data: folder {root} does not exist; {_WHERE}")
    return root


def data_files(root: str) -> dict[str, str]:
    """Which files `root` provides; the small set wins when both are there (the original's default)."""
    present = [pair for pair in PRODUCT_SETS if os.path.isfile(os.path.join(root, pair[0]))]
    if not present:
        raise WebshopDataError(f"WebShop data: {PRODUCT_SETS[0][0]} (or {PRODUCT_SETS[1][0]}) not found in {root}; "
                               f"{_WHERE}")
    products_name, attrs_name = present[0]
    files = {"products": products_name, "attributes": attrs_name, "human": HUMAN_FILE}
    for name in files.values():
        if not os.path.isfile(os.path.join(root, name)):
            raise WebshopDataError(f"WebShop data: {name} not found in {root}; {_WHERE}")
    paths = {role: os.path.join(root, name) for role, name in files.items()}
    if os.path.isfile(os.path.join(root, REVIEWS_FILE)):
        paths["reviews"] = os.path.join(root, REVIEWS_FILE)
    return paths


def _malformed(path: str, why: str) -> WebshopDataError:
    return WebshopDataError(f"WebShop data: {path} is malformed ({why}); expected the original WebShop format, "
                            f"{_WHERE}")


def _read_json(path: str, kind: type):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _malformed(path, f"{type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(value, kind):
        raise _malformed(path, f"top level is {type(value).__name__}, expected {kind.__name__}")
    return value


def parse_pricing(raw) -> tuple[tuple[float, ...], str]:
    """engine.py's price cleaning: "$12.99" -> (12.99,), "$12.99 to $15.99" -> (12.99, 15.99); none -> $100.

    Each "$"-separated piece keeps only digits and dots. Unparsable pieces are dropped (the original would
    raise), and an already-cleaned list of numbers is accepted as is.
    """
    prices: list[float] = []
    if isinstance(raw, (list, tuple)):
        prices = [float(p) for p in raw if isinstance(p, (int, float))]
    elif isinstance(raw, str) and raw:
        for piece in raw.split("$")[1:]:
            try:
                prices.append(float(Decimal(re.sub(r"[^\d.]", "", piece))))
            except InvalidOperation:
                continue
    if not prices:
        return (DEFAULT_PRICE,), f"${DEFAULT_PRICE}"
    if len(prices) == 1:
        return (prices[0],), f"${prices[0]}"
    return (prices[0], prices[1]), f"${prices[0]} to ${prices[1]}"


def _clean_options(raw) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """engine.py: option names lower-cased; values stripped, "/" -> " | ", lower-cased; None groups dropped."""
    options: dict[str, list[str]] = {}
    images: dict[str, str | None] = {}
    for name, contents in (raw or {}).items():
        if contents is None:
            continue
        values = []
        for content in contents:
            value = str(content["value"] if isinstance(content, dict) else content).strip().replace("/", " | ").lower()
            values.append(value)
            images[value] = content.get("image") if isinstance(content, dict) else None
        options[name.lower()] = values
    return options, images


def _bullets(raw) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(str(b) for b in raw) if isinstance(raw, list) else (str(raw),)


def _reviews(path: str | None) -> tuple[dict[str, tuple[Review, ...]], dict[str, str | float]]:
    if path is None:
        return {}, {}
    reviews, ratings = {}, {}
    for r in _read_json(path, list):
        rows = []
        for x in r.get("reviews") or []:  # engine.py: "stars" is the older name of "score", "review" of "body"
            rows.append(Review(title=str(x.get("title", "")), score=x.get("score", x.get("stars", 0)),
                               body=str(x.get("body", x.get("review", "")))))
        reviews[r["asin"]] = tuple(rows)
        ratings[r["asin"]] = r.get("average_rating", "N.A.")
    return reviews, ratings


def _product(p: dict, attrs: dict, reviews: dict, ratings: dict) -> Product:
    asin = p["asin"]
    options, images = _clean_options(p.get("customization_options"))
    pricing, price_tag = parse_pricing(p["pricing"] if "pricing" in p else p.get("Price"))
    entry = attrs.get(asin)
    attributes = tuple(entry["attributes"]) if isinstance(entry, dict) and "attributes" in entry else ("DUMMY_ATTR",)
    images_list = p.get("images") or [None]
    return Product(
        asin=asin,
        title=str(p.get("name", p.get("Title", ""))),
        category=str(p["category"]),
        query=str(p["query"]).lower().strip(),
        product_category=str(p.get("product_category") or ""),
        description=str(p.get("full_description", p.get("Description")) or ""),
        bullet_points=_bullets(p.get("small_description", p.get("BulletPoints"))),
        attributes=attributes,
        options=options,
        option_to_image=images,
        pricing=pricing,
        price_tag=price_tag,
        rating=ratings.get(asin, "N.A."),
        reviews=reviews.get(asin, ()),
        main_image=images_list[0],
    )


def load_products(paths: dict[str, str]) -> list[Product]:
    """engine.py::load_products: skip asin "nan" or longer than 10 characters, keep the first of duplicates."""
    raw = _read_json(paths["products"], list)
    attrs = _read_json(paths["attributes"], dict)
    reviews, ratings = _reviews(paths.get("reviews"))
    products, seen = [], set()
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or not isinstance(p.get("asin"), str):
            raise _malformed(paths["products"], f"product #{i} has no string 'asin'")
        asin = p["asin"]
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        try:
            products.append(_product(p, attrs, reviews, ratings))
        except (KeyError, TypeError, AttributeError) as e:
            raise _malformed(paths["products"], f"product {asin}: {type(e).__name__} {e}") from None
    return products


def product_prices(products: list[Product], rng: random.Random) -> dict[str, float]:
    """engine.py::generate_product_prices: a ranged price is one uniform draw inside the range."""
    return {p.asin: p.pricing[0] if len(p.pricing) == 1 else rng.uniform(*p.pricing[:2]) for p in products}


def human_goals(products: list[Product], prices: dict[str, float], human: dict, rng: random.Random,
                human_path: str = HUMAN_FILE) -> tuple[list[Goal], int]:
    """goal.py::get_human_goals, in product order; returns (goals, skipped instructions without attributes)."""
    goals, skipped = [], 0
    for product in products:
        for ins in human.get(product.asin) or []:
            if not isinstance(ins, dict) or not isinstance(ins.get("instruction"), str):
                raise _malformed(human_path, f"an instruction of {product.asin} has no 'instruction' text")
            attributes = ins.get("instruction_attributes") or []
            if not attributes:
                skipped += 1
                continue
            bounds = [p for p in PRICE_RANGE if p > prices[product.asin]][:4]
            if len(bounds) >= 2:  # the larger of two of the (up to) four next $10 steps above the price
                _, price_upper = sorted(rng.sample(bounds, 2))
                price_text = f", and price lower than {price_upper:.2f} dollars"
            else:
                price_upper, price_text = NO_PRICE_BOUND, ""
            goals.append(Goal(
                asin=product.asin,
                category=product.category,
                query=product.query,
                name=product.title,
                product_category=product.product_category,
                instruction_text=ins["instruction"].strip(".") + price_text,
                attributes=tuple(attributes),
                price_upper=price_upper,
                goal_options=ins.get("instruction_options") or [],
            ))
    return goals, skipped


def _load(root: str, paths: dict[str, str], key: tuple) -> WebshopData:
    products = load_products(paths)
    human = _read_json(paths["human"], dict)
    rng = random.Random(PRICE_SEED)
    prices = product_prices(products, rng)
    goals, skipped = human_goals(products, prices, human, rng, paths["human"])
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return WebshopData(root=root, files=paths, products=products, by_asin={p.asin: p for p in products},
                       prices=prices, goals=goals, skipped_instructions=skipped, key=key)


_CACHE: dict[tuple, WebshopData] = {}
_LOCK = threading.Lock()


def cache_key(paths: dict[str, str]) -> tuple:
    """Same files, unchanged on disk -> same key: an env pool loads the data once per process."""
    return tuple(sorted((role, path, os.stat(path).st_mtime_ns, os.stat(path).st_size)
                        for role, path in paths.items()))


def load_data(data_root: str | None = None) -> WebshopData:
    """The products and shuffled goals under `data_root` (else $WEBSHOP_DATA), loaded once per process."""
    root = resolve_data_root(data_root)
    paths = data_files(root)
    key = cache_key(paths)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(root, paths, key)
        return _CACHE[key]
