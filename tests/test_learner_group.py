"""Learner ranks as a Ray actor group (data parallel under DeepSpeed, gloo on CPU) and placement groups
for samplers / learner ranks, split or colocated."""

from __future__ import annotations

import pytest
import torch

from skill1.config import load_config
from skill1.runtime import plan_placement, shard_by_tokens
from skill1.types import Stage, TrainSample
from skill1.weights.wire import digest


def _sample(length: int, prompt: int, seed: int) -> TrainSample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 700, (length,), generator=g).tolist()
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
        assert ray.get(fleet.learners[1].get_weights.remote()) is None  # one packet, from rank 0
        digests = ray.get([r.weights_digest.remote(every_rank=True) for r in fleet.learners])
        assert digests[0] == digests[1] == digest(packet.flat)  # the ranks stay in step
    finally:
        fleet.shutdown()
        ray.shutdown()
    single = Learner(small_model_dir, cfg.learner.__class__(**{**cfg.learner.__dict__, "num_ranks": 1,
                                                               "backend": "torch"}), seed=0)
    single.update(samples)
    from skill1.weights.wire import unpack

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


# --- two DeepSpeed learner ranks over gloo, without Ray: the loss is a token mean over both ranks' tokens ----------

def _file_group(store_file: str):
    """Stands in for `join_learner_group`: a gloo group met through a file (no TCP store in a unit test)."""
    import os

    import torch.distributed as dist

    def join(rank: int, world: int, *_):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)

    return join


def _rank_main(rank: int, model_dir: str, shards: list, bad_shards: list, tmp: str) -> None:
    import skill1.learner.learner as learner_mod
    from skill1.config import LearnerConfig

    torch.set_num_threads(1)
    learner_mod.join_learner_group = _file_group(f"{tmp}/store")
    cfg = LearnerConfig(backend="deepspeed", zero_stage=2, lr=1e-3, kl_coef=0.01, micro_batch_tokens=10_000)
    learner = learner_mod.Learner(model_dir, cfg, seed=0, rank=rank, world=2, store=("unused", 0))
    good = learner.update(shards[rank])
    weights = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    bad = learner.update(bad_shards[rank])  # a NaN loss on rank 1 only: both ranks skip the step
    unchanged = all(torch.equal(v, weights[k]) for k, v in learner.model.named_parameters())
    torch.save({"good": good, "bad": bad, "weights": weights, "unchanged": unchanged}, f"{tmp}/rank{rank}.pt")


def test_two_gloo_ranks_with_unequal_tokens_give_the_one_rank_gradient(small_model_dir, tmp_path):
    """Rank 0 holds 3x the generated tokens of rank 1: each token must weigh the same as in one rank's batch
    (sum over all tokens / all tokens), not twice as much on the smaller rank (a mean of per-rank means)."""
    import multiprocessing as mp

    from skill1.config import LearnerConfig
    from skill1.learner.learner import Learner

    samples = [_sample(16, 6, i) for i in range(3)] + [_sample(9, 6, 3)]  # 10, 10, 10 | 3 generated tokens
    shards = [samples[:3], samples[3:]]
    poisoned = TrainSample(samples[3].input_ids, 6, samples[3].old_logprobs, float("nan"), Stage.ACT)
    bad_shards = [samples[:3], [poisoned]]
    ctx = mp.get_context("spawn")  # a fresh interpreter per rank, as Ray gives each learner actor
    procs = [ctx.Process(target=_rank_main, args=(r, small_model_dir, shards, bad_shards, str(tmp_path)))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = Learner(small_model_dir, LearnerConfig(backend="torch", lr=1e-3, kl_coef=0.01, micro_batch_tokens=10_000),
                     seed=0)
    m = single.update(samples)
    # the gradient norm (before clipping) is that of the whole batch's token mean on both ranks
    for r in range(2):
        assert out[r]["good"]["learner/grad_norm"] == pytest.approx(m["learner/grad_norm"], rel=1e-4)
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(out[0]["weights"][name], p.detach(), atol=2e-6, rtol=1e-4)
        assert torch.equal(out[0]["weights"][name], out[1]["weights"][name])
    assert [o["bad"]["learner/skipped_nonfinite"] for o in out] == [1.0, 1.0] and all(o["unchanged"] for o in out)
