"""Learner ranks as a Ray actor group (data parallel under DeepSpeed, gloo on CPU) and placement groups
for samplers / learner ranks, split or colocated."""

from __future__ import annotations

import pytest
import torch

from skill1.config import load_config
from skill1.runtime import plan_placement, shard_by_tokens
from skill1.types import Stage, TrainSample


def _sample(length: int, prompt: int, seed: int) -> TrainSample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (length,), generator=g).tolist()
    return TrainSample(ids, prompt, (-torch.rand(length - prompt, generator=g) * 3).tolist(),
                       float(torch.randn(1, generator=g)), Stage.ACT)


def test_shards_balance_tokens_and_keep_every_sample():
    samples = [_sample(n, 2, i) for i, n in enumerate([30, 10, 20, 20, 5, 15])]
    shards = shard_by_tokens(samples, 2)
    assert sorted(map(id, sum(shards, []))) == sorted(map(id, samples))
    assert [sum(len(s.input_ids) for s in sh) for sh in shards] == [50, 50]
    assert shard_by_tokens(samples, 1) == [samples]
    assert shard_by_tokens(samples[:1], 3)[1:] == [[], []]  # more ranks than samples: some get none


def test_placement_plans_split_and_colocated_bundles():
    base = ["learner.num_ranks=2", "learner.num_gpus=1", "learner.num_cpus=4", "rollout.num_samplers=4",
            "rollout.num_gpus_per_sampler=0.25", "rollout.num_cpus_per_sampler=1"]
    bundles, learners, samplers = plan_placement(load_config(None, [*base, "placement.mode=split"]), True)
    assert bundles == [{"CPU": 4, "GPU": 1}] * 2 + [{"CPU": 1, "GPU": 0.25}] * 4
    assert learners == [0, 1] and samplers == [2, 3, 4, 5]
    bundles, learners, samplers = plan_placement(load_config(None, [*base, "placement.mode=colocate"]), True)
    assert bundles == [{"CPU": 6, "GPU": 1.5}] * 2  # two samplers share each learner rank's GPU
    assert learners == [0, 1] and samplers == [0, 1, 0, 1]


@pytest.mark.slow
def test_two_learner_ranks_in_a_placement_group_equal_one_rank_on_the_whole_batch(small_model_dir):
    """Equal tokens per rank: DeepSpeed's mean of the ranks' token-mean gradients is the whole batch's."""
    import ray

    from skill1.learner.learner import Learner
    from skill1.runtime import init_ray, start_fleet

    cfg = load_config(None, ["name=ranks", f"model.path={small_model_dir}", "learner.num_ranks=2",
                             "learner.torch_threads=1", "learner.num_cpus=0.5", "placement.mode=split",
                             "rollout.backend=scripted", "rollout.num_cpus_per_sampler=0.1",
                             "env.num_cpus_per_pool=0", "learner.lr=1e-3", "learner.kl_coef=0"])
    samples = [_sample(16, 6, i) for i in range(4)]  # 10 generated tokens each: 2 + 2 per rank
    init_ray(cfg)
    fleet = start_fleet(cfg, small_model_dir, None, with_learner=True)
    try:
        table = ray.util.placement_group_table(fleet.placement_group)
        assert table["state"] == "CREATED" and len(table["bundles"]) == 3
        metrics = ray.get(fleet.update(samples))
        assert [m["learner/ranks"] for m in metrics] == [2.0, 2.0] and all(m["learner/steps"] == 1 for m in metrics)
        packet = ray.get(fleet.learner.get_weights.remote())
        other = ray.get(fleet.learners[1].get_weights.remote())
        assert packet.flat.tobytes() == other.flat.tobytes()  # the ranks stay in step
    finally:
        fleet.shutdown()
        ray.shutdown()
    single = Learner(small_model_dir, cfg.learner.__class__(**{**cfg.learner.__dict__, "num_ranks": 1,
                                                               "backend": "torch"}), seed=0)
    single.update(samples)
    from skill1.learner.weight_sync import unpack

    got = unpack(packet)
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), atol=2e-6, rtol=1e-4)


@pytest.mark.slow
def test_a_placement_the_cluster_cannot_fit_is_one_clear_error(small_model_dir):
    import ray

    from skill1.runtime import init_ray, start_fleet

    cfg = load_config(None, ["name=nofit", f"model.path={small_model_dir}", "placement.mode=split",
                             "learner.num_gpus=1", "placement.timeout_s=2", "env.num_cpus_per_pool=0"])
    init_ray(cfg)
    try:
        with pytest.raises(RuntimeError, match="could not fit bundles .*GPU.* placement.mode=none"):
            start_fleet(cfg, small_model_dir, None, with_learner=True)
    finally:
        ray.shutdown()
