"""Two DeepSpeed ZeRO-3 learner ranks over gloo (CPU) and a sampler on the collective weight channel, without Ray:
what the GPU layout of the 7B configs does, with NCCL swapped for gloo.

- ZeRO-3 partitions every parameter (outside a gather `.data` is an empty placeholder): the layout sent to the
  samplers must carry the whole shapes, and the weights a sampler receives must equal the learner's;
- under ZeRO-3 reading weights is a collective, so every rank runs `broadcast_weights`; only rank 0 holds the
  channel;
- ranks with unequal numbers of micro-batches must still run the same number of forward/backward passes
  (ZeRO-3 gathers in every forward): a hang here is a failure (the ranks are killed at the timeout).
"""

from __future__ import annotations

import pytest
import torch

from skill1.types import Stage, TrainSample

pytestmark = pytest.mark.slow
TIMEOUT_S = 240


def _sample(length: int, prompt: int, seed: int) -> TrainSample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 700, (length,), generator=g).tolist()
    return TrainSample(ids, prompt, (-torch.rand(length - prompt, generator=g) * 3).tolist(),
                       float(torch.randn(1, generator=g)), Stage.ACT)


def _rank(rank: int, model_dir: str, shard: list, port: int, tmp: str) -> None:
    import os

    import torch.distributed as dist

    import skill1.learner.learner as learner_mod
    from skill1.config import LearnerConfig
    from skill1.weights.wire import digest

    torch.set_num_threads(1)

    def join(rank: int, world: int, *_):  # stands in for join_learner_group: a file rendezvous
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)

    learner_mod.join_learner_group = join
    # 64-token micro-batches: rank 0's three 40-token samples are three micro-batches, rank 1's one is one
    cfg = LearnerConfig(backend="deepspeed", zero_stage=3, lr=1e-2, kl_coef=0.01, micro_batch_tokens=64,
                        weight_sync_bucket_mb=0.05)
    learner = learner_mod.Learner(model_dir, cfg, seed=0, rank=rank, world=2, store=("unused", 0))
    layout = learner.weights_layout()
    before = learner.weights_digest()
    metrics = learner.update(shard, recompute_proximal=True)
    learner.open_channel("127.0.0.1", port, 2, "gloo", int(0.05 * 2**20))
    sent = learner.broadcast_weights()
    after = learner.weights_digest()
    packet = learner.get_weights()
    torch.save({"layout": layout, "before": before, "after": after, "sent": sent, "steps": metrics["learner/steps"],
                "packet_digest": digest(packet.flat) if packet is not None else None}, f"{tmp}/rank{rank}.pt")


def _sampler(model_dir: str, port: int, tmp: str) -> None:
    from skill1.models.tiny import load_policy
    from skill1.weights.wire import CollectiveChannel, digest, layout_of

    torch.set_num_threads(1)
    layout = layout_of(load_policy(model_dir)[0])  # the whole model's layout, as the learner must report it
    channel = CollectiveChannel("127.0.0.1", port, 1, 2, "gloo", int(0.05 * 2**20))
    flat = torch.empty(layout.numel, dtype=getattr(torch, layout.dtype))
    buckets = channel.receive(flat, layout)
    torch.save({"digest": digest(flat), "buckets": buckets}, f"{tmp}/sampler.pt")


def test_zero3_ranks_with_unequal_micro_batches_train_and_sync_whole_weights(small_model_dir, tmp_path):
    import multiprocessing as mp

    from skill1.learner.engine import free_port as _free_port
    from skill1.models.tiny import load_policy
    from skill1.weights.wire import layout_of

    shards = [[_sample(40, 10, i) for i in range(3)], [_sample(20, 10, 3)]]
    port = _free_port()
    ctx = mp.get_context("spawn")  # a fresh interpreter per process, as Ray gives each actor
    procs = [ctx.Process(target=_rank, args=(r, small_model_dir, shards[r], port, str(tmp_path))) for r in range(2)]
    procs.append(ctx.Process(target=_sampler, args=(small_model_dir, port, str(tmp_path))))
    import time

    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S  # one deadline for all: a hang costs TIMEOUT_S, not 3x
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not any(hung), f"hung (learner 0, learner 1, sampler): {hung}"
    assert [p.exitcode for p in procs] == [0, 0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    sampler = torch.load(tmp_path / "sampler.pt", weights_only=False)
    hf = layout_of(load_policy(small_model_dir)[0])
    assert r0["layout"].shapes == hf.shapes and r1["layout"].shapes == hf.shapes  # not ZeRO-3's (0,) placeholders
    assert r0["steps"] == r1["steps"] == 1.0
    assert r0["after"] != r0["before"]  # the update reached the weights
    assert sampler["digest"] == r0["after"] == r0["packet_digest"]  # every bit, by broadcast and by packet
    assert r0["sent"]["buckets"] == sampler["buckets"] > 1 and r1["sent"]["buckets"] == 0
    assert r1["after"] is None and r1["packet_digest"] is None  # rank 1 only took part in the gathers
