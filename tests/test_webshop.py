"""WebShop text env on the format-true fixture (tests/fixtures/webshop): loading, search, reward, pages, splits."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys

import pytest

from skill1.envs.base import EnvDataError
from skill1.envs.webshop import (
    DEFAULT_MAX_STEPS,
    INVALID_ACTION_PENALTY,
    WebshopDataError,
    WebshopEnv,
    WebshopTaskSource,
    expert_actions,
)
from skill1.envs.webshop.data import (
    GOAL_SHUFFLE_SEED,
    PRICE_RANGE,
    PRICE_SEED,
    Goal,
    Product,
    human_goals,
    load_data,
    parse_pricing,
    product_prices,
)
from skill1.envs.webshop.env import INVALID, SEARCH_ACTION
from skill1.envs.webshop.reward import (
    attribute_reward,
    get_reward,
    heuristic_nouns,
    normalize_color,
    option_reward,
    type_reward,
)
from skill1.envs.webshop.search import SEARCH_RETURN_N, minimal_stem, search_engine
from skill1.types import Task

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "webshop"))
from make_fixture import FILES, write_fixture  # noqa: E402

SHAMPOO, CONDITIONER, HEADPHONES, WATCH, SHOES = "B0BE000001", "B0BE000002", "B0EL000001", "B0EL000008", "B0FA000003"
PINK_SALT, MAXI_DRESS, POLO = "B0FO000009", "B0FA000001", "B0FA000010"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return write_fixture(str(tmp_path_factory.mktemp("webshop")))


@pytest.fixture(scope="module")
def data(root):
    return load_data(root)


@pytest.fixture(scope="module")
def source(root):
    return WebshopTaskSource(data_root=root, eval_size=10, validation_size=20)


def goal_index(data, asin: str, startswith: str = "") -> int:
    return next(i for i, g in enumerate(data.goals) if g.asin == asin and g.instruction_text.startswith(startswith))


def play(env: WebshopEnv, task, actions: list[str]):
    result = env.reset(task)
    for a in actions:
        listed = result.admissible_actions
        assert listed == [SEARCH_ACTION] if a.startswith("search[") else a in listed
        result = env.step(a)
    return result


# -- loading ------------------------------------------------------------------------------------------------

def test_products_are_cleaned_as_the_original_loader(data):
    assert len(data.products) == 50 and len(data.by_asin) == 50
    assert data.by_asin[CONDITIONER].title != "Duplicate Row That Must Be Ignored"  # duplicate asin: first kept
    assert "nan" not in data.by_asin and "B0TOOLONG123" not in data.by_asin

    shampoo = data.by_asin[SHAMPOO]
    assert shampoo.query == "shampoo"  # "  Shampoo " lower-cased and stripped
    assert shampoo.category == "beauty"
    assert shampoo.product_category == "Beauty & Personal Care › Skin & Hair Care › Shampoo"
    assert shampoo.options == {"size": ["8 fl oz", "16 fl oz", "32 fl oz"]}
    assert shampoo.attributes == ("sulfate free", "dry hair", "argan oil")

    ranged = data.by_asin[CONDITIONER]  # "$9.49 to $12.99"
    assert ranged.pricing == (9.49, 12.99) and ranged.price_tag == "$9.49 to $12.99"
    assert 9.49 <= data.prices[CONDITIONER] <= 12.99
    assert data.by_asin[WATCH].pricing == (1299.0,) and data.by_asin[WATCH].price_tag == "$1299.0"

    shoes = data.by_asin[SHOES]  # "White/Pink" -> "white | pink"; images only on some values
    assert shoes.options == {"color": ["white | pink", "black", "grey"], "size": ["7", "8", "9"]}
    assert shoes.option_to_image["white | pink"].endswith(f"{SHOES}-0.jpg") and shoes.option_to_image["black"] is None
    assert "bundle" not in data.by_asin[HEADPHONES].options  # a None option group is dropped
    assert data.by_asin[MAXI_DRESS].bullet_points == ("Machine wash cold, elastic waist, pockets",)

    salt = data.by_asin[PINK_SALT]  # no pricing, options, bullets, images or attributes entry
    assert (salt.pricing, salt.price_tag, salt.options, salt.bullet_points) == ((100.0,), "$100.0", {}, ())
    assert salt.attributes == ("DUMMY_ATTR",) and salt.main_image is None and salt.rating == "N.A."


def test_parse_pricing_cases():
    assert parse_pricing("$12.99 to $15.99") == ((12.99, 15.99), "$12.99 to $15.99")
    assert parse_pricing("$1,299.00") == ((1299.0,), "$1299.0")
    assert parse_pricing("") == ((100.0,), "$100.0")
    assert parse_pricing(None) == ((100.0,), "$100.0")
    assert parse_pricing([3.5, 4.0, 9.0]) == ((3.5, 4.0), "$3.5 to $4.0")


def test_goals_follow_get_human_goals_and_the_seed_233_shuffle(data, root):
    assert len(data.goals) == 57 and data.skipped_instructions == 1  # the instruction without attributes
    assert all(g.asin in data.by_asin for g in data.goals)  # B0MISSING0 is no product: no goal
    assert all(g.weight == 1 for g in data.goals)
    for g in data.goals:
        bounds = [p for p in PRICE_RANGE if p > data.prices[g.asin]][:4]
        if g.asin == WATCH:  # $1,299 is above every candidate bound
            assert g.price_upper == 1000000 and "price lower" not in g.instruction_text
        else:  # the larger of two of the four $10 steps above the price
            assert g.price_upper in bounds[1:]
            assert g.instruction_text.endswith(f", and price lower than {g.price_upper:.2f} dollars")
    shampoo = data.goals[goal_index(data, SHAMPOO, "i need")]
    # the trailing "." stripped, the price clause appended
    assert shampoo.instruction_text.startswith(
        "i need a sulfate free argan oil shampoo for dry hair in the 16 fl oz size, and price lower than")
    assert (shampoo.attributes, shampoo.goal_options) == (("sulfate free", "dry hair"), ["16 fl oz"])
    assert (shampoo.name, shampoo.query, shampoo.category) == (data.by_asin[SHAMPOO].title, "shampoo", "beauty")

    # the order is the original's `random.seed(233); random.shuffle(goals)` over goals in product order
    with open(os.path.join(root, FILES[2])) as f:
        human = json.load(f)
    rng = random.Random(PRICE_SEED)
    unshuffled, _ = human_goals(data.products, product_prices(data.products, rng), human, rng)
    state = random.getstate()
    try:
        random.seed(GOAL_SHUFFLE_SEED)
        random.shuffle(unshuffled)
    finally:
        random.setstate(state)
    assert unshuffled == data.goals


def test_data_resolution_and_clear_errors(root, tmp_path, monkeypatch):
    monkeypatch.delenv("WEBSHOP_DATA", raising=False)
    with pytest.raises(WebshopDataError) as e:
        load_data(None)
    msg = str(e.value)
    assert isinstance(e.value, EnvDataError) and "\n" not in msg
    assert "WEBSHOP_DATA" in msg and "env.data_path" in msg and "setup.sh" in msg and "items_shuffle_1000.json" in msg

    monkeypatch.setenv("WEBSHOP_DATA", root)
    assert len(load_data(None).goals) == 57
    monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path / "nowhere"))
    assert len(load_data(root).goals) == 57  # an explicit root wins over the variable
    with pytest.raises(WebshopDataError, match="does not exist"):
        load_data(None)

    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    os.remove(partial / "items_human_ins.json")
    with pytest.raises(WebshopDataError, match=r"items_human_ins\.json not found in .*setup\.sh"):
        WebshopEnv(data_root=str(partial))
    os.remove(partial / "items_shuffle_1000.json")
    with pytest.raises(WebshopDataError, match=r"items_shuffle_1000\.json \(or items_shuffle\.json\) not found"):
        WebshopTaskSource(data_root=str(partial))

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "items_ins_v2_1000.json").write_text("{not json")
    with pytest.raises(WebshopDataError, match=r"items_ins_v2_1000\.json is malformed") as e:
        load_data(str(broken))
    assert "\n" not in str(e.value)
    (broken / "items_ins_v2_1000.json").write_text("[]")  # valid JSON, wrong shape
    with pytest.raises(WebshopDataError, match="top level is list, expected dict"):
        load_data(str(broken))


def test_full_file_names_and_optional_reviews(root, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    shutil.copy(os.path.join(root, "items_shuffle_1000.json"), full / "items_shuffle.json")
    shutil.copy(os.path.join(root, "items_ins_v2_1000.json"), full / "items_ins_v2.json")
    shutil.copy(os.path.join(root, "items_human_ins.json"), full / "items_human_ins.json")
    (full / "reviews.json").write_text(json.dumps([{"asin": SHAMPOO, "average_rating": 4.5, "reviews": [
        {"title": "Great", "stars": 5, "review": "Soft hair."}]}]))
    data = load_data(str(full))
    assert data.files["products"].endswith("items_shuffle.json") and len(data.goals) == 57
    assert data.by_asin[SHAMPOO].rating == 4.5

    env = WebshopEnv(data_root=str(full))
    task = WebshopTaskSource(str(full), 0, 0).task(goal_index(data, SHAMPOO))
    r = play(env, task, [f"search[{data.by_asin[SHAMPOO].title}]", f"click[{SHAMPOO.lower()}]", "click[reviews]"])
    assert r.observation.endswith('< Prev [SEP] "Great" [SEP] 5 [SEP] Soft hair.')


# -- search -------------------------------------------------------------------------------------------------

def test_search_ranks_each_product_first_for_its_title(data):
    engine = search_engine(data)
    for p in data.products:
        assert engine.search(p.title.lower())[0] == p.asin, p.title
    everyone = engine.search("quality")  # in every description
    assert len(everyone) == SEARCH_RETURN_N == len(data.products)
    assert engine.search("quality", k=7) == everyone[:7]  # the cut keeps the best, ties by product order
    assert engine.search("zebra xylophone") == [] and engine.search("the and of") == []
    assert search_engine(data) is engine  # one index per data folder per process


def test_minimal_stemmer_matches_lucene_rules():
    cases = {"batteries": "battery", "socks": "sock", "lotions": "lotion", "shoes": "shoes", "glass": "glass",
             "bus": "bus", "boxes": "boxe", "pies": "py", "as": "as"}
    assert {w: minimal_stem(w) for w in cases} == cases


# -- reward: hand-computed from goal.py's rules (heuristic nouns pinned so spaCy cannot change the numbers) ---

def product(**kw) -> Product:
    base = dict(asin="B000000001", title="Argan Oil Shampoo", category="beauty", query="shampoo",
                product_category="Beauty › Hair Care › Shampoo",
                description="A gentle shampoo with lavender scent.",
                bullet_points=("Gentle formula",), attributes=("sulfate free", "argan oil", "long lasting fragrance"),
                options={"size": ["8 fl oz", "16 fl oz"], "color": ["white", "black"]}, option_to_image={},
                pricing=(14.99,), price_tag="$14.99")
    return Product(**{**base, **kw})


def goal(**kw) -> Goal:
    base = dict(asin="B000000001", category="beauty", query="shampoo", name="Argan Oil Shampoo",
                product_category="Beauty › Hair Care › Shampoo", instruction_text="...",
                attributes=("sulfate free", "argan oil"), price_upper=30.0, goal_options=[])
    return Goal(**{**base, **kw})


def score(p: Product, g: Goal, price: float, options: dict) -> float:
    return get_reward(p, g, price, options, nouns=heuristic_nouns).score


def test_reward_two_of_three_attributes_one_option_price_ok():
    # "paraben free" vs "sulfate free": token-set score 58 <= 85, and not in the text
    g = goal(attributes=("sulfate free", "argan oil", "paraben free"), goal_options=["16 fl oz"])
    b = get_reward(product(), g, 14.99, {"size": "16 fl oz"}, nouns=heuristic_nouns)
    # (2 attrs + 1 option + price 1) / (3 attrs + 1 option + 1) * r_type 1 = 4/5
    assert b.score == pytest.approx((2 + 1 + 1) / (3 + 1 + 1)) == pytest.approx(0.8)
    assert (b.num_attr_matches, b.num_option_matches, b.r_price, b.r_type) == (2, 1, True, 1.0)
    assert b.r_att == pytest.approx(2 / 3) and b.r_option == 1.0 and b.query_match and b.category_match


def test_reward_price_over_the_bound():
    g = goal(attributes=("sulfate free", "argan oil", "long lasting"), price_upper=40.0)
    # 3 of 3 attributes ("long lasting" ~ "long lasting fragrance": token-set 100), no options, 45 > 40:
    # (3 + 0 + 0) / (3 + 0 + 1) = 0.75
    assert score(product(), g, 45.0, {}) == pytest.approx(3 / 4)
    assert score(product(), g, 40.0, {}) == 1.0  # price <= bound counts


def test_reward_option_mismatch_and_exact_size():
    g = goal(goal_options=["black", "16 fl oz"])
    # color white vs black misses, size matches: (2 attrs + 1 option + 1 price) / (2 + 2 + 1) = 0.8
    assert score(product(), g, 10.0, {"color": "white", "size": "16 fl oz"}) == pytest.approx((2 + 1 + 1) / (2 + 2 + 1))
    assert score(product(), g, 10.0, {"color": "black", "size": "16 fl oz"}) == 1.0
    # "size" matches exactly only: "8" is not "size 8" (token-set would say 100); another option name is fuzzy
    assert option_reward(product(), ["size 8"], {"size": "8"}) == (0.0, 0)
    assert option_reward(product(), ["size 8"], {"style": "8"}) == (1.0, 1)
    # both sides reduced to their first color: "navy blue" and "midnight blue" are both "blue"
    assert option_reward(product(), ["navy blue"], {"color": "midnight blue"}) == (1.0, 1)
    assert option_reward(product(), [], {}) == (None, 0)


def test_reward_attribute_fuzzy_and_text_fallback():
    p = product()
    assert attribute_reward(p, goal(attributes=("long lasting",))) == (1.0, 1)  # fuzzy on the attribute list
    assert attribute_reward(p, goal(attributes=("lavender scent",))) == (1.0, 1)  # found in the description
    assert attribute_reward(p, goal(attributes=("gentle formula",))) == (1.0, 1)  # in the (lower-cased) bullets
    assert attribute_reward(p, goal(attributes=("Gentle formula",))) == (0.0, 0)  # the goal side is not lower-cased
    assert attribute_reward(p, goal(attributes=("paraben free",))) == (0.0, 0)


def test_reward_type_rules():
    g = goal(name="Argan Oil Shampoo Bottle Pump", attributes=("argan oil",))
    lotion = product(title="Argan Body Lotion", query="body lotion", product_category="Beauty › Skin Care › Lotion",
                     attributes=("argan oil",))
    # no query match, 1 shared category level (< 2), nouns: 1 of 5 goal nouns = 0.2, not > 0.2 -> r_type 0.5;
    # (1 attr + 0 options + 1 price) / (1 + 0 + 1) * 0.5 = 0.5
    t = type_reward(lotion, g, heuristic_nouns)
    assert (t.r_type, t.query_match, t.category_match, t.title_score) == (0.5, False, False, 0.2)
    assert score(lotion, g, 10.0, {}) == pytest.approx((1 + 0 + 1) / (1 + 0 + 1) * 0.5)
    # the same with the category breadcrumb sharing 2 levels -> a match -> r_type 1
    assert type_reward(product(title="Argan Body Lotion", query="lotion"), g, heuristic_nouns).r_type == 1.0
    # under 10% of the goal's nouns -> 0.1 even though the query matches: 1/11 nouns
    long_name = goal(name="argan oil shampoo bottle pump salon formula lavender scent travel kit")
    t = type_reward(product(title="Argan Body Lotion"), long_name, heuristic_nouns)
    assert (t.r_type, t.query_match) == (0.1, True) and t.title_score == pytest.approx(1 / 11)
    # no shared noun -> 0 whatever else matches
    assert score(product(title="Leather Belt"), g, 10.0, {}) == 0.0
    # a goal name without nouns counts as 0.2 (no penalty below 0.1); the query match keeps r_type 1
    assert type_reward(product(), goal(name="the and of"), heuristic_nouns).title_score == 0.2


def test_reward_over_one_is_clipped_and_kept_raw():
    # an option the goal does not ask for but the title contains counts as a match (the original's quirk):
    # (2 attrs + 1 option + 1 price) / (2 + 0 + 1) = 4/3 -> paid 1.0
    b = get_reward(product(title="Argan Oil Shampoo Black"), goal(), 10.0, {"color": "black"}, nouns=heuristic_nouns)
    assert b.raw_score == pytest.approx(4 / 3) and b.score == 1.0 and b.r_option is None


def test_normalize_color_matches_the_original_suite():
    suite = [("", ""), ("black forest", "black"), ("violet lavender", "lavender"), ("steelivy fuchsia", "fuchsia"),
             ("123alabaster", "alabaster"), ("webshop", "webshop")]
    assert [normalize_color(s) for s, _ in suite] == [e for _, e in suite]


# -- environment ----------------------------------------------------------------------------------------------

def test_expert_wins_every_fixture_goal(root, data, source):
    env = WebshopEnv(data_root=root)
    assert env.max_steps == DEFAULT_MAX_STEPS == 15 and INVALID_ACTION_PENALTY == 0.5
    lengths = []
    for i in range(len(data.goals)):
        task = source.task(i)
        actions = expert_actions(task, root)
        assert len(actions) <= env.max_steps
        r = play(env, task, actions)
        assert (r.done, r.won, r.reward) == (True, True, 1.0), (task.task_id, actions, r.info)
        assert r.info["score"] == 1.0 and r.info["reward_breakdown"]["r_type"] == 1.0
        assert (r.info["task_id"], r.info["family"], r.info["steps"]) == (task.task_id, task.family, len(actions))
        lengths.append(len(actions))
    assert max(lengths) >= 7  # some goal needed paging or a second search


def test_expert_pages_and_searches_again(root, data, source):
    paged = expert_actions(source.task(goal_index(data, POLO, "premium")), root)
    assert paged[1:5] == ["click[next >]"] * 4 and paged[5] == f"click[{POLO.lower()}]"
    rack = data.by_asin["B0GA000010"]
    again = expert_actions(source.task(goal_index(data, rack.asin, "something")), root)
    assert again[1:4] == ["click[back to search]", f"search[{rack.title}]", "click[b0ga000010]"]


def test_episode_pages_admissible_actions_and_buy(root, data, source):
    i = goal_index(data, SHOES)
    env, instruction = WebshopEnv(data_root=root), data.goals[i].instruction_text
    r = env.reset(source.task(i))
    assert r.observation == f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
    assert r.admissible_actions == [SEARCH_ACTION] and not r.done and r.info["steps"] == 0

    r = env.step("search[Lightweight Running SHOES]")  # any text; lower-cased as the original does
    assert r.observation.startswith(f"Instruction: [SEP] {instruction} [SEP] Back to Search [SEP] Page 1 (Total")
    assert r.admissible_actions[:2] == ["click[back to search]", "click[next >]"]
    assert f"click[{SHOES.lower()}]" in r.admissible_actions and r.reward == 0.0

    r = env.step(f"click[{SHOES.lower()}]")
    shoes = data.by_asin[SHOES]
    assert r.observation == sep_join(["Instruction:", instruction, "Back to Search", "< Prev", "color", "white | pink",
                                      "black", "grey", "size", "7", "8", "9", shoes.title, "Price: $42.0",
                                      "Rating: N.A.", "Description", "Features", "Reviews", "Buy Now"])
    assert r.admissible_actions == ["click[back to search]", "click[< prev]", "click[description]", "click[features]",
                                    "click[reviews]", "click[buy now]", "click[white | pink]", "click[black]",
                                    "click[grey]", "click[7]", "click[8]", "click[9]"]

    r = env.step("click[white | pink]")
    r = env.step("click[features]")  # sub-page: its text, then < Prev back to the item with options kept
    assert r.observation.endswith("< Prev [SEP] Lightweight by design [SEP] Rubber sole by design [SEP] "
                                  "Satisfaction guaranteed")
    assert r.admissible_actions == ["click[back to search]", "click[< prev]"]
    r = env.step("click[< prev]")
    r = env.step("click[description]")
    assert r.observation.endswith(f"< Prev [SEP] {shoes.description}")
    r = env.step("click[< prev]")
    assert "click[buy now]" in r.admissible_actions
    r = env.step("click[8]")
    r = env.step("click[buy now]")
    assert (r.done, r.won, r.reward, r.admissible_actions) == (True, True, 1.0, [])
    assert r.info["purchased_options"] == {"color": "white | pink", "size": "8"} and r.info["steps"] == 9
    assert r.observation.startswith("Thank you for shopping with us!")
    with pytest.raises(RuntimeError):
        env.step("click[buy now]")


def sep_join(items: list[str]) -> str:
    return " [SEP] ".join(items)


def test_pagination_next_prev_and_back_to_search(root, source):
    env = WebshopEnv(data_root=root)
    env.reset(source.task(0))
    page1 = env.step("search[quality]")
    products1 = [a for a in page1.admissible_actions if a.startswith("click[b0")]
    assert "Page 1 (Total results: 50)" in page1.observation and len(products1) == 10
    assert "click[< prev]" not in page1.admissible_actions

    page2 = env.step("click[next >]")
    products2 = [a for a in page2.admissible_actions if a.startswith("click[b0")]
    assert "Page 2 (Total results: 50)" in page2.observation and len(products2) == 10
    assert page2.admissible_actions[:3] == ["click[back to search]", "click[< prev]", "click[next >]"]
    assert not set(products1) & set(products2)

    item = env.step(products2[0])  # an item's < Prev returns to the results page it came from
    assert item.info["page"] == "item"
    back = env.step("click[< prev]")
    assert back.observation == page2.observation and back.admissible_actions == page2.admissible_actions
    assert env.step("click[< prev]").admissible_actions == page1.admissible_actions

    for _ in range(5):  # past the 50 hits: an empty page, and (as in the original) "Next >" still shown
        last = env.step("click[next >]")
    assert "Page 6 (Total results: 50)" in last.observation and "click[next >]" in last.admissible_actions
    assert not [a for a in last.admissible_actions if a.startswith("click[b0")]

    r = env.step("click[back to search]")
    assert r.admissible_actions == [SEARCH_ACTION] and r.observation.startswith("WebShop [SEP] Instruction:")


def test_invalid_actions_change_nothing(root, source):
    env = WebshopEnv(data_root=root)
    start = env.reset(source.task(0))
    for bad in ("click[search]", "click[buy now]", "search[]", "look", "search[ ]"):
        r = env.step(bad)
        assert (r.observation, r.admissible_actions, r.done) == (INVALID, start.admissible_actions, False)
    results = env.step("search[shampoo]")
    r = env.step("search[conditioner]")  # no search bar on a results page
    assert (r.observation, r.admissible_actions, r.info["page"]) == (INVALID, results.admissible_actions, "results")
    assert r.info["steps"] == 7  # invalid actions still take a step


def test_max_steps_ends_without_reward(root, source):
    env = WebshopEnv(max_steps=3, data_root=root)
    env.reset(source.task(0))
    env.step("search[shampoo]")
    r = env.step("click[next >]")
    assert not r.done
    r = env.step("click[< prev]")
    assert (r.done, r.won, r.reward, r.admissible_actions) == (True, False, 0.0, [])
    assert r.info["truncated"] and "score" not in r.info
    with pytest.raises(RuntimeError):
        env.step("click[back to search]")
    with pytest.raises(ValueError, match="goal_index"):
        env.reset(Task("webshop/x", "webshop", "beauty", "", {"goal_index": 10_000}))


def test_wrong_purchase_scores_the_original_way(root, data, source):
    i = goal_index(data, SHAMPOO, "i need")  # wants 16 fl oz; buying the 8 fl oz misses the option
    env = WebshopEnv(data_root=root)
    title = data.by_asin[SHAMPOO].title
    r = play(env, source.task(i), [f"search[{title}]", f"click[{SHAMPOO.lower()}]", "click[8 fl oz]", "click[buy now]"])
    # "8 fl oz" is not "16 fl oz" (size: exact) and not in the text: (2 attrs + 0 options + 1 price) / (2 + 1 + 1)
    assert r.info["reward_breakdown"]["num_option_matches"] == 0
    assert (r.done, r.won, r.reward) == (True, False, pytest.approx((2 + 0 + 1) / (2 + 1 + 1)))


# -- tasks ----------------------------------------------------------------------------------------------------

def test_splits_are_disjoint_deterministic_and_cycle(root, data, source):
    assert source.families() == ["beauty", "electronics", "fashion", "food", "garden"]
    assert (list(source.split_indices("eval")), list(source.split_indices("validation"))) == (
        list(range(10)), list(range(10, 30)))
    assert list(source.split_indices("train")) == list(range(30, 57))
    ids = {s: {t.task_id for t in source.sample(s, 10, seed=3)} for s in ("eval", "validation", "train")}
    assert not (ids["eval"] & ids["validation"]) and not (ids["eval"] & ids["train"])
    assert not (ids["validation"] & ids["train"])

    a, b = source.sample("train", 8, seed=1), source.sample("train", 8, seed=1)
    assert [t.task_id for t in a] == [t.task_id for t in b] and len({t.task_id for t in a}) == 8
    assert [t.task_id for t in source.sample("train", 8, seed=2)] != [t.task_id for t in a]
    t = a[0]
    g = data.goals[t.payload["goal_index"]]
    assert (t.task_id, t.env, t.family, t.description) == (f"webshop/{t.payload['goal_index']}", "webshop",
                                                           g.category, g.instruction_text)

    cycled = [t.payload["goal_index"] for t in source.sample("eval", 25, seed=0)]  # 10 goals: passes of 10
    assert sorted(cycled[:10]) == list(range(10)) and sorted(cycled[10:20]) == list(range(10))
    assert set(cycled[20:]) <= set(range(10)) and len(set(cycled[20:])) == 5
    assert source.sample("eval", 0, seed=0) == []

    paper = WebshopTaskSource(data_root=root)  # 500 / 1000: the fixture's 57 goals are all "eval"
    assert len(paper.sample("eval", 57, seed=0)) == 57
    with pytest.raises(ValueError, match="split 'train' is empty.*eval_size=500"):
        paper.sample("train", 1, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        source.sample("test", 1, seed=0)


def test_registry_builds_webshop(root):
    from skill1.envs.registry import make_env, make_task_source

    env = make_env("webshop", max_steps=15, data_root=root)
    task = make_task_source("webshop", data_root=root).sample("eval", 1, seed=0)[0]
    assert play(env, task, expert_actions(task, root)).won
    other = WebshopEnv(data_root=root)
    assert other.data is env.data and other.engine is env.engine  # shared per process
