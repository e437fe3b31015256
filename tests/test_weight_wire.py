"""What weights travel as: the dtype per collective backend, the buckets both ends derive from the layout,
and the learner's DeepSpeed config for bf16 (pure functions: no process group, no GPU)."""

from __future__ import annotations

import pytest
import torch

from skill1.config import LearnerConfig
from skill1.learner.engine import deepspeed_config
from skill1.weights.wire import WeightsLayout, bucket_bounds, wire_dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_floats_travel_as_int16_on_gloo_only(dtype):
    assert wire_dtype("gloo", dtype) == torch.int16  # gloo has no bfloat16
    assert wire_dtype("nccl", dtype) == dtype  # NCCL has no int16 ("Short"): the first sync would raise
    assert wire_dtype("gloo", torch.float32) == wire_dtype("nccl", torch.float32) == torch.float32


def test_buckets_group_whole_parameters_and_tile_the_buffer():
    layout = WeightsLayout(["a", "b", "c", "d", "e"], [(10,), (3, 4), (100,), (2,), (3,)], "float32")
    # 60 bytes = 15 float32s: a (10) alone, b (12) alone, c (100 > 15) alone, d + e (5) together
    assert bucket_bounds(layout, 60) == [(0, 1, 0, 10), (1, 2, 10, 22), (2, 3, 22, 122), (3, 5, 122, 127)]
    assert bucket_bounds(layout, 10**6) == [(0, 5, 0, 127)]
    bf16 = WeightsLayout(["a", "b"], [(8,), (8,)], "bfloat16")  # 2 bytes each: 32 bytes hold both
    assert bucket_bounds(bf16, 32) == [(0, 2, 0, 16)] and len(bucket_bounds(bf16, 31)) == 2


def test_each_colocated_sampler_maps_the_learner_rank_on_its_own_gpu():
    from skill1.weights.wire import ipc_sources

    learners = ["node-a:GPU-0", "node-a:GPU-1"]
    # samplers i % 2 on rank i % 2's bundle, as placement.mode=colocate puts them; the keys are physical GPUs
    assert ipc_sources(["node-a:GPU-0", "node-a:GPU-1", "node-a:GPU-0"], learners) == [0, 1, 0]
    assert ipc_sources(["node-a:GPU-1"], learners) == [1]  # not rank 0's handle for every sampler
    with pytest.raises(ValueError, match="sampler 1 shares no GPU with a learner rank"):
        ipc_sources(["node-a:GPU-0", "node-b:GPU-0"], learners)


def test_bf16_learner_accumulates_gradients_in_fp32_under_zero():
    ds = deepspeed_config(LearnerConfig(zero_stage=3), bf16=True, on_gpu=True)
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["bf16"] == {"enabled": True}
    # bounded ZeRO buffers on GPU (DeepSpeed's 5e8-element default costs ~9 GB under ZeRO-2), as plan.py counts
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                                       "reduce_bucket_size": 50_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                                       "stage3_max_live_parameters": 50_000_000}
    assert deepspeed_config(LearnerConfig(zero_stage=2), True, True)["zero_optimization"]["allgather_bucket_size"] \
        == 50_000_000
    assert deepspeed_config(LearnerConfig(zero_stage=2), False, False)["zero_optimization"] == {"stage": 2}  # CPU
    assert "data_types" not in deepspeed_config(LearnerConfig(zero_stage=3, fp32_grad_accum=False), True, True)
    assert "data_types" not in deepspeed_config(LearnerConfig(zero_stage=0), True, True)  # DeepSpeed refuses the mix
    assert "data_types" not in deepspeed_config(LearnerConfig(zero_stage=2), False, False)  # fp32 weights


def test_gradient_checkpointing_is_a_config_key(small_model_dir):
    from skill1.learner.learner import Learner

    on = Learner(small_model_dir, LearnerConfig(backend="torch", gradient_checkpointing=True))
    off = Learner(small_model_dir, LearnerConfig(backend="torch"))
    assert on.model.is_gradient_checkpointing and not off.model.is_gradient_checkpointing


def test_config_refuses_top_p_below_one_and_a_sharded_reference_without_zero3():
    from skill1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.top_p.*temperature only"):
        load_config(None, ["rollout.top_p=0.9"])
    with pytest.raises(ConfigError, match="learner.shard_reference"):
        load_config(None, ["learner.shard_reference=true", "learner.zero_stage=2"])
    assert load_config(None, ["learner.shard_reference=true", "learner.zero_stage=3"]).learner.shard_reference


def test_colocated_vllm_sleeps_through_each_synchronous_update(local_ray):
    import ray

    from skill1.config import ConfigError, load_config
    from skill1.runtime import Fleet

    with pytest.raises(ConfigError, match="rollout.sleep_while_training"):
        load_config(None, ["rollout.sleep_while_training=true"])  # hf backend, async loop
    cfg = load_config(None, ["rollout.sleep_while_training=true", "rollout.backend=vllm", "rollout.mode=sync"])
    assert cfg.rollout.engine_kwargs()["enable_sleep_mode"] is True

    @ray.remote
    class Engine:
        def __init__(self):
            self.calls = []

        def sleep(self):
            self.calls.append("sleep")

        def wake_up(self):
            self.calls.append("wake_up")

        def log(self):
            return self.calls

    engines = [Engine.remote(), Engine.remote()]
    Fleet([], engines, None, [], sleep_while_training=False).sleep_samplers()
    assert ray.get([e.log.remote() for e in engines]) == [[], []]
    fleet = Fleet([], engines, None, [], sleep_while_training=True)
    fleet.sleep_samplers()
    fleet.wake_samplers()
    assert ray.get([e.log.remote() for e in engines]) == [["sleep", "wake_up"]] * 2
