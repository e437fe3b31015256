"""Every numeric config key is finite and inside sane bounds (skill1.config.BOUNDS): a typo or a NaN is one
line naming the key and the value, before anything starts, never NaN weights hours later."""

from __future__ import annotations

import dataclasses
import math

import pytest

from skill1.config import BOUNDS, ConfigError, Skill1Config, _interval, load_config, numeric_keys


@pytest.mark.parametrize("override", [
    "learner.lr=inf", "learner.max_grad_norm=nan", "learner.max_grad_norm=-1", "learner.weight_decay=nan",
    "algorithm.lambda_rerank=nan", "library.initial_utility=nan", "library.similarity_weight=nan",
    "rollout.temperature=inf", "rollout.max_new_tokens_act=1000000000", "learner.num_cpus=-1",
    "learner.num_gpus=-1", "learner.torch_threads=-1", "rollout.torch_threads=0", "rollout.num_cpus_per_sampler=-1",
    "learner.max_nonfinite_skips=0", "env.pool_resources.env_node=inf",
])
def test_the_values_of_the_report_are_refused_in_one_line(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg
    assert f"got {value}" in msg or f"got {float(value)}" in msg  # the value as given


def _value(cls, key):
    obj = cls()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_numeric_key_has_bounds_that_hold_its_default():
    keys = numeric_keys()
    assert len(keys) > 60 and set(keys) == set(BOUNDS)  # a new numeric key needs its bounds here
    for key in keys:
        lo, lo_open, hi, hi_open = _interval(BOUNDS[key])
        default = _value(Skill1Config, key)
        assert default is None or (lo < default if lo_open else lo <= default), key
        assert default is None or (default < hi if hi_open else default <= hi), key


def _is_int(key: str) -> bool:
    section, _, name = key.rpartition(".")
    cls = Skill1Config if not section else type(getattr(Skill1Config(), section))
    return {f.name: f.type for f in dataclasses.fields(cls)}[name] == "int"


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_each_bound_is_enforced_and_names_the_key(key):
    lo, lo_open, hi, hi_open = _interval(BOUNDS[key])
    step = 1 if _is_int(key) else 0
    below = lo if lo_open else lo - (step or max(abs(lo) * 1e-3, 1e-3))
    above = hi if hi_open else hi + (step or max(abs(hi) * 1e-3, 1e-3))
    bad = [below, above] + ([] if step else [math.nan, math.inf, -math.inf])
    for value in bad:
        text = str(int(value)) if step else repr(float(value))
        with pytest.raises(ConfigError, match=f"^{key}: "):
            load_config(None, [f"{key}={text}"])
