"""The joints between the pieces, checked directly (issue 19): a wrong sign where two pieces meet changes a
run and the run it is compared with alike, so these tests check the joint itself against numbers worked out by
hand (docs/METHOD.md "Reward and credit"; advantages.py's formulas):

- `loop.steps.compute_credit`: the config's invalid-action penalty, lambda_rerank / lambda_distill (with their
  signs), intrinsic coefficient and u_hat aggregation reach the credit, and `episodes_to_samples` puts each
  stage's advantage on that stage's tokens;
- the learner's direction: one real update (torch and DeepSpeed) through `compute_credit` →
  `episodes_to_samples` → `collate` → PPO: the log-prob of the positively credited response rises, the
  negatively credited one's falls, measured by a forward pass that shares no code with `collate`;
- wandb: the metrics of a logged iteration are in the offline run's own history (the `.wandb` file), read back
  record by record, not `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch

from skill1.algo.batch import episodes_to_samples
from skill1.config import LearnerConfig, load_config
from skill1.loop.steps import compute_credit
from skill1.types import Candidate, Episode, Segment, Skill, Stage, Task

TASK = Task("t0", "household", "pick_and_place", "put a mug on the desk")
INV_SQRT2 = 1 / math.sqrt(2)  # a group of two with different rewards: +-(1/2) / std_{N-1} = +-1/sqrt(2)


def _seg(stage: Stage, prompt: list[int], response: list[int], logprobs: list[float] | None = None) -> Segment:
    return Segment(stage, list(prompt), list(response), logprobs if logprobs is not None else [-1.0] * len(response),
                   text="x")


def _episode(eid: str, group: str, outcome: float, *, invalid: int = 0, utilities: tuple[float, ...] = (),
             chosen: int | None = None, segments: list[Segment] | None = None) -> Episode:
    """An episode as the worker hands it over; one segment of every stage unless `segments` is given."""
    cands = [Candidate(f"s{i}", f"scenario {i}", f"strategy {i}", u, 3, 0.5, 0.5) for i, u in enumerate(utilities)]
    if segments is None:
        segments = [_seg(st, [10 + i, 11 + i], [20 + i, 21 + i]) for i, st in enumerate(Stage)]
    return Episode(eid, group, TASK, segments, cands, None if chosen is None else f"s{chosen}", outcome,
                   success=outcome >= 1.0, num_steps=3 + invalid, num_invalid_actions=invalid)


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


# --- compute_credit: the config's penalty and lambdas, with their signs -----------------------------------------------

def test_an_invalid_action_lowers_the_utilization_advantage_by_the_configured_penalty():
    """Two equal episodes, one with invalid actions: it gets the lower utilization advantage. A group of three
    with penalty 0.25 (from the config, not the 0.1 default) has GRPO rewards 1, 1 - 2*0.25, 0: advantages
    exactly 1, 0, -1 (mean 0.5, std 0.5). A flipped penalty makes the invalid one the best; a dropped penalty
    or the default penalty give other numbers."""
    cfg = _cfg("env.invalid_action_penalty=0.25", "algorithm.lambda_distill=0.5")
    eps = [_episode("a0", "pair", 1.0), _episode("a1", "pair", 1.0, invalid=1),
           _episode("b0", "three", 1.0), _episode("b1", "three", 1.0, invalid=2), _episode("b2", "three", 0.0)]
    c = compute_credit(eps, cfg)
    assert c[0].utilization == pytest.approx(INV_SQRT2, rel=1e-4)
    assert c[1].utilization == pytest.approx(-INV_SQRT2, rel=1e-4)  # same outcome, one invalid action: worse
    assert [x.utilization for x in c[2:]] == pytest.approx([1.0, 0.0, -1.0], abs=1e-5)
    # the intrinsic terms use the outcome, not the penalised reward: no candidates, so u_hat = 0 and r_dis = r
    assert [x.r_dis for x in c] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert c[3].distillation == pytest.approx(0.0 + 0.5 * 1.0, abs=1e-5)
    # through the sample-building path: every ACT token of the invalid-action episode carries its advantage
    samples = episodes_to_samples(eps[:2], c[:2])
    act = [s.advantage for s in samples if s.stage is Stage.ACT]
    assert act == pytest.approx([INV_SQRT2, -INV_SQRT2], rel=1e-4)


UTILS = (0.2, 0.6, 0.4)  # u_hat = max = 0.6, mean = 0.4: r_sel(chosen s1) = +0.2, r_sel(s0) = -0.2, r_sel(s2) = 0


def _credit_batch():
    return [
        # both won (utilization 0): r_dis = 1 - 0.6 = +0.4 for both
        _episode("w0", "won", 1.0, utilities=UTILS, chosen=1),
        _episode("w1", "won", 1.0, utilities=UTILS, chosen=0),
        # both lost (utilization 0): r_dis = 0 - 0.6 = -0.6
        _episode("l0", "lost", 0.0, utilities=UTILS, chosen=2),
        _episode("l1", "lost", 0.0, utilities=UTILS, chosen=2),
        # one of each (utilization +-1/sqrt 2), both chose the average candidate (r_sel = 0)
        _episode("m0", "mixed", 1.0, utilities=UTILS, chosen=2),
        _episode("m1", "mixed", 0.0, utilities=UTILS, chosen=2),
    ]


@pytest.mark.parametrize("overrides,lam_sel,lam_dis,u_hat", [
    (["algorithm.lambda_distill=0.5", "algorithm.lambda_rerank=0.25"], 0.25, 0.5, 0.6),
    (["algorithm.lambda_distill=0.5", "algorithm.lambda_rerank=0.25", "algorithm.intrinsic_coefficient=2.0"],
     0.5, 1.0, 0.6),  # c scales both: A + c * lambda * term
    (["algorithm.lambda_distill=0.1", "algorithm.lambda_rerank=0.7", "library.u_hat_aggregation=mean"],
     0.7, 0.1, 0.4),
    (["algorithm.preset=no_distillation_credit", "algorithm.lambda_rerank=0.25"], 0.25, 0.0, 0.6),
    (["algorithm.preset=no_selection_credit", "algorithm.lambda_distill=0.5"], 0.0, 0.5, 0.6),
])
def test_stage_advantages_follow_the_configured_lambdas_with_their_signs(overrides, lam_sel, lam_dis, u_hat):
    """Selection tokens get A + c*lambda_rerank*r_sel, distillation tokens A + c*lambda_distill*r_dis (r_dis =
    r - u_hat), action tokens A: by hand, per episode and per sample. A won group with equal outcomes has A = 0,
    so its distillation advantage is +c*lambda_distill*(1 - u_hat) > 0: the sign of the variation term; a lost
    one's is negative. -lambda_distill, swapped lambdas, a dropped coefficient or aggregation all break it."""
    eps = _credit_batch()
    credits = compute_credit(eps, _cfg(*overrides))
    a = [0.0, 0.0, 0.0, 0.0, INV_SQRT2, -INV_SQRT2]
    r_sel = [0.6 - 0.4, 0.2 - 0.4, 0.0, 0.0, 0.0, 0.0]
    r_dis = [1 - u_hat, 1 - u_hat, -u_hat, -u_hat, 1 - u_hat, -u_hat]
    for i, c in enumerate(credits):
        assert c.utilization == pytest.approx(a[i], abs=1e-5), i
        assert c.r_dis == pytest.approx(r_dis[i]) and c.r_sel == pytest.approx(r_sel[i]), i
        assert c.selection == pytest.approx(a[i] + lam_sel * r_sel[i], abs=1e-5), i
        assert c.distillation == pytest.approx(a[i] + lam_dis * r_dis[i], abs=1e-5), i
    if lam_dis:  # the sign of the variation term: beating the library's promise is rewarded, falling short is not
        assert credits[0].distillation > 0 > credits[2].distillation
    if lam_sel:  # choosing the better candidate is rewarded, the worse one penalised
        assert credits[0].selection > 0 > credits[1].selection
    # the samples: each stage's tokens carry that stage's advantage (never another stage's)
    samples = episodes_to_samples(eps, credits)
    assert len(samples) == 4 * len(eps)
    expected = {Stage.QUERY: "selection", Stage.RERANK: "selection", Stage.ACT: "utilization",
                Stage.DISTILL: "distillation"}
    for j, s in enumerate(samples):
        c, seg = credits[j // 4], eps[j // 4].segments[j % 4]
        assert s.stage is seg.stage and s.input_ids == seg.prompt_ids + seg.response_ids
        assert s.advantage == pytest.approx(getattr(c, expected[s.stage])), (j, s.stage)


# --- env → episode → credit: the outcome is the env's score, success its win ------------------------------------------

class ScoredEnv:
    """A WebShop-like env: one purchase ends the episode with a score in [0, 1]; only a perfect one wins."""

    max_steps = 5

    def __init__(self, score: float):
        self.score = score

    def reset(self, task):
        from skill1.envs.base import StepResult

        return StepResult("a shop", ["buy it", "look around"])

    def step(self, action):
        from skill1.envs.base import StepResult

        assert action == "buy it"
        return StepResult("bought", [], reward=self.score, done=True, won=self.score >= 1.0)


def _play(tokenizer, env, eid: str, actions: list[str]) -> Episode:
    from skill1.agent.episode import Generate, Reset, Step, run_episode
    from skill1.settings import episode_settings
    from skill1.types import Generated

    settings = episode_settings(_cfg("algorithm.preset=no_library"), training=True)
    texts = iter([f"<think>t</think><action>{a}</action>" for a in actions]
                 + ["<scenario>when shopping</scenario><strategy>buy it</strategy>"])
    gen, result = run_episode(TASK, eid, "shop", tokenizer, settings), None
    while True:
        try:
            request = gen.send(result)
        except StopIteration as stop:
            return stop.value
        if isinstance(request, Generate):
            text = next(texts)
            ids = tokenizer.encode(text, add_special_tokens=False)
            result = Generated(ids, [-1.0] * len(ids), text)
        elif isinstance(request, Reset):
            result = env.reset(request.task)
        else:
            assert isinstance(request, Step)
            result = env.step(request.action)


def test_a_partial_score_is_the_outcome_and_not_a_success_and_drives_the_credit(tokenizer):
    """The episode's outcome is the env's reward (WebShop: the purchase's score), success only a win; the GRPO
    reward subtracts the invalid action, the variation term (no library: u_hat = 0) uses the outcome."""
    partial = _play(tokenizer, ScoredEnv(0.6), "p", ["fly away", "buy it"])  # one invalid action first
    perfect = _play(tokenizer, ScoredEnv(1.0), "w", ["buy it"])
    assert (partial.outcome, partial.success, partial.num_invalid_actions) == (0.6, False, 1)
    assert (perfect.outcome, perfect.success, perfect.num_invalid_actions) == (1.0, True, 0)
    cp, cw = compute_credit([partial, perfect], _cfg("env.invalid_action_penalty=0.5", "algorithm.preset=no_library",
                                                     "algorithm.lambda_distill=0.5"))
    # GRPO rewards 0.6 - 0.5 = 0.1 and 1.0: advantages -+1/sqrt 2; r_dis = the outcomes
    assert (cp.utilization, cw.utilization) == pytest.approx((-INV_SQRT2, INV_SQRT2), rel=1e-4)
    assert (cp.r_dis, cw.r_dis) == pytest.approx((0.6, 1.0))
    assert cp.distillation == pytest.approx(-INV_SQRT2 + 0.5 * 0.6, rel=1e-4)


# --- the learner's direction: +A up, -A down, through collate and the real Learner ------------------------------------

def _true_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """log p(response | prompt) from the full-vocabulary logits of one unpadded sequence: no collate, no
    response_logprobs (the path under test), so a mistake there cannot hide in the measurement."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(response)]


UP_PROMPT, UP_RESPONSE = [200 + 7 * i for i in range(9)], [500, 501, 502, 503]  # ids < 700: the small
DOWN_PROMPT, DOWN_RESPONSE = [400 + 5 * i for i in range(11)], [600, 601, 602, 603, 604]  # model's vocabulary


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_one_update_raises_the_positive_segment_and_lowers_the_negative_one(small_model_dir, backend):
    from skill1.learner.learner import Learner

    learner = Learner(small_model_dir, LearnerConfig(backend=backend, lr=1e-3, kl_coef=0.01,
                                                     micro_batch_tokens=10_000, torch_threads=2), seed=0)
    model = learner.model
    before_up = _true_logprobs(model, UP_PROMPT, UP_RESPONSE)
    before_down = _true_logprobs(model, DOWN_PROMPT, DOWN_RESPONSE)
    # a won and a lost episode of one task, the behaviour log-probs those of the current weights (on-policy)
    eps = [_episode("up", "g", 1.0, segments=[_seg(Stage.ACT, UP_PROMPT, UP_RESPONSE, before_up)]),
           _episode("down", "g", 0.0, segments=[_seg(Stage.ACT, DOWN_PROMPT, DOWN_RESPONSE, before_down)])]
    credits = compute_credit(eps, _cfg())
    samples = episodes_to_samples(eps, credits)
    assert [s.advantage for s in samples] == pytest.approx([INV_SQRT2, -INV_SQRT2], rel=1e-4)
    m = learner.update(samples)
    assert m["learner/steps"] == 1.0 and m["learner/tokens"] == len(UP_RESPONSE) + len(DOWN_RESPONSE)
    # on-policy and still the reference: ratio 1, nothing clipped, no KL yet; the loss is -mean(A) over tokens
    assert m["learner/kl"] == pytest.approx(0.0, abs=1e-7) and m["learner/clip_frac"] == 0.0
    mean_a = (len(UP_RESPONSE) - len(DOWN_RESPONSE)) * INV_SQRT2 / (len(UP_RESPONSE) + len(DOWN_RESPONSE))
    assert m["learner/pg_loss"] == pytest.approx(-mean_a, abs=1e-4)
    after_up = _true_logprobs(model, UP_PROMPT, UP_RESPONSE)
    after_down = _true_logprobs(model, DOWN_PROMPT, DOWN_RESPONSE)
    rise = [a - b for a, b in zip(after_up, before_up)]
    fall = [a - b for a, b in zip(after_down, before_down)]
    # the positively credited response became more likely, token by token; the negatively credited one less
    # (about +-0.5 nats a token here: one Adam step at lr 1e-3 on a random tiny model)
    assert min(rise) > 0 and sum(rise) > 0.1, (rise, fall)
    assert max(fall) < 0 and sum(fall) < -0.1, (rise, fall)
    # the policy has moved away from the frozen reference: a second update sees a positive KL
    m2 = learner.update(samples)
    assert m2["learner/kl"] > 1e-6


# --- wandb: the offline run's own history holds the metrics -----------------------------------------------------------

def read_wandb_records(path: Path) -> list:
    """Every record of a `.wandb` transaction log: W&B's LevelDB-style log (a 7-byte header ":W&B", 0xBEE1,
    version 0; 32 KiB blocks of records `crc32 (4) | length (2) | type (1) | data`, type 1 full, 2/3/4 first/
    middle/last fragment), each record a `wandb_internal_pb2.Record`. wandb 0.31 has no Python reader left."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a wandb transaction log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero-filled: the rest of the block (or a log still being written)
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + n]
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == crc, f"{path}: bad record checksum at {pos}"
        pos += 7 + n
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    out = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        out.append(rec)
    return out


def wandb_history(run_dir: Path, timeout_s: float = 30.0) -> list[dict]:
    """The history rows of the one offline run under `run_dir`, once its log holds the exit record (wandb-core
    closes the file shortly after `finish()` returns)."""
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_records(runs[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def test_logged_metrics_are_in_the_wandb_offline_history(tmp_path):
    from skill1.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, {"algorithm": {"lambda_distill": 0.3}}, "offline", "skill1-tests", None,
                           "joints", sample_skills=2)
    first = {"rollout/reward": 0.25, "learner/kl": 0.125, "distill/advantage": -0.375, "library/size": 2.0}
    second = {"rollout/reward": 0.75, "learner/kl": 0.5, "distill/advantage": 0.625, "library/size": 3.0}
    skills = [Skill("s0", "when", "how", utility=0.5, uses=2), Skill("s1", "if", "then", utility=0.25, uses=1)]
    logger.log(first, step=1, skills=skills)
    logger.log(second, step=2)
    logger.finish()
    rows = wandb_history(tmp_path)
    by_iteration = {row["iteration"]: row for row in rows if "iteration" in row}
    assert set(by_iteration) == {1, 2}, rows
    for it, logged in ((1, first), (2, second)):
        assert {k: by_iteration[it].get(k) for k in logged} == logged
    # the library panels went to wandb with the iteration that had skills (wandb flattens nested values)
    assert by_iteration[1]["library/utility_hist/_type"] == "histogram"
    assert sum(by_iteration[1]["library/utility_hist/values"]) == 2 and by_iteration[1]["library/skills/nrows"] == 2
    assert not any(k.startswith("library/utility_hist") for k in by_iteration[2])
    # every metric charts against `iteration`, not wandb's own step (a resumed run continues the same curves)
    records = read_wandb_records(next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")))
    steps = {r.metric.glob_name: r.metric.step_metric for r in records if r.WhichOneof("record_type") == "metric"}
    assert steps.get("*") == "iteration"
