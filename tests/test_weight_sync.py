"""Weight-sync transports: the collective broadcast (gloo here, NCCL on GPUs: the same code) moves the
learner's weights into every sampler in one call each, bucketed; CUDA IPC needs a GPU."""

from __future__ import annotations

import pytest
import torch

from skill1.config import load_config
from skill1.types import Stage, TrainSample

pytestmark = pytest.mark.slow


def test_collective_broadcast_reaches_every_sampler_in_buckets(small_model_dir, local_ray):
    import ray

    from skill1.runtime import init_ray, start_fleet

    # 0.1 MiB buckets: the broadcast really goes in several pieces
    cfg = load_config(None, ["name=ws-test", f"model.path={small_model_dir}", "rollout.num_samplers=2",
                             "learner.backend=torch", "learner.lr=1e-2", "learner.weight_sync=collective",
                             "learner.weight_sync_bucket_mb=0.1", "rollout.num_cpus_per_sampler=0",
                             "learner.num_cpus=0", "env.num_cpus_per_pool=0"])
    init_ray(cfg)
    fleet = start_fleet(cfg, small_model_dir, None, with_learner=True)
    try:
        assert fleet.weight_sync == "collective" and fleet.layout.numel * 4 > 3 * 0.1 * 2**20
        learner = fleet.learner
        start = ray.get(learner.weights_digest.remote())
        assert ray.get([s.weights_digest.remote() for s in fleet.samplers]) == [start, start]
        ray.get(learner.update.remote([TrainSample(list(range(10, 30)), 12, [-1.0] * 8, 1.0, Stage.ACT)]))
        trained = ray.get(learner.weights_digest.remote())
        assert trained != start
        acks, others = fleet.push_weights(1)
        sent = ray.get(others)[0]
        assert ray.get(acks) == [1, 1] and sent["version"] == 1 and sent["buckets"] >= 3
        assert ray.get([s.weights_digest.remote() for s in fleet.samplers]) == [trained, trained]
    finally:
        fleet.shutdown()


def test_cuda_ipc_is_refused_without_a_gpu_learner():
    from skill1.config import ConfigError

    with pytest.raises(ConfigError, match="cuda_ipc needs the learner on a GPU"):
        load_config(None, ["learner.weight_sync=cuda_ipc"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC weight sync needs a CUDA GPU")
def test_cuda_ipc_handle_maps_the_same_memory():
    from skill1.weights.wire import cuda_ipc_handle, open_cuda_ipc

    flat = torch.arange(1000, dtype=torch.bfloat16, device="cuda")
    assert torch.equal(open_cuda_ipc(cuda_ipc_handle(flat)), flat)
