"""Ray start-up and the actor fleet (env pools, samplers, learner, rollout worker), shared by train and eval."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from skill1.config import Skill1Config
from skill1.envs.pool import EnvPool
from skill1.learner.learner import Learner
from skill1.rollout.sampler import GenerationBatch, make_sampler
from skill1.rollout.worker import RolloutWorker


def init_ray(cfg: Skill1Config) -> None:
    """Join `ray_address` / RAY_ADDRESS if given (`ray job submit` sets it), else start a local instance."""
    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    env_vars = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars})
    else:
        ray.init(runtime_env={"env_vars": env_vars}, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)


class SamplerHost:
    """Actor body for one sampler backend: generate, take weights, report its weights version."""

    def __init__(self, backend: str, model_path: str, dtype: str, seed: int):
        self.sampler = make_sampler(backend, model_path, dtype, seed)

    def generate(self, prompts, params, seeds=None) -> GenerationBatch:
        return GenerationBatch(self.sampler.version, self.sampler.generate(prompts, params, seeds))

    def load_weights(self, packet) -> int:
        self.sampler.load_weights(packet)
        return self.sampler.version

    def version(self) -> int:
        return self.sampler.version


def _threads(n: int, **extra: str) -> dict:
    return {"env_vars": {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), **extra}}


@dataclass
class Fleet:
    pools: list
    samplers: list
    worker: object
    learner: object | None

    def shutdown(self) -> None:
        for actor in [*self.pools, *self.samplers, self.worker, *([self.learner] if self.learner else [])]:
            ray.kill(actor)


def start_env_pools(cfg: Skill1Config) -> list:
    """`env.num_pools` pool actors; SPREAD puts them on as many nodes as the cluster has (scale-out by config)."""
    e = cfg.env
    # no max_task_retries: a call to a dead pool fails fast and the worker re-queues its episodes
    pool_opts = {"num_cpus": e.num_cpus_per_pool, "max_restarts": e.max_pool_restarts,
                 "scheduling_strategy": e.pool_scheduling, "resources": dict(e.pool_resources),
                 **({"memory": e.memory_per_pool_mb * 2**20} if e.memory_per_pool_mb else {})}
    return [ray.remote(EnvPool).options(name=f"{cfg.name}:env-pool-{i}", **pool_opts)
            .remote(e.name, e.max_steps, e.env_options()) for i in range(e.num_pools)]


def start_fleet(cfg: Skill1Config, model_path: str, library_path: str | None, with_learner: bool) -> Fleet:
    r, lc = cfg.rollout, cfg.learner
    pools = start_env_pools(cfg)
    samplers = [ray.remote(SamplerHost).options(name=f"{cfg.name}:sampler-{i}", num_cpus=r.num_cpus_per_sampler,
                                                num_gpus=r.num_gpus_per_sampler,
                                                runtime_env=_threads(r.torch_threads))
                # one seed for all: per-request seeds make a draw independent of the sampler it lands on
                .remote(r.backend, model_path, cfg.model.dtype, cfg.algorithm.seed) for i in range(r.num_samplers)]
    # threaded: submit/poll reach it while its streaming loop runs
    worker = ray.remote(RolloutWorker).options(name=f"{cfg.name}:rollout-worker", num_cpus=0.25,
                                               max_concurrency=4).remote(
        model_path, samplers, pools, library_path, cfg.library.encoder)
    learner = None
    if with_learner:
        learner = ray.remote(Learner).options(
            name=f"{cfg.name}:learner", num_cpus=lc.num_cpus, num_gpus=lc.num_gpus,
            runtime_env=_threads(lc.torch_threads, DS_ACCELERATOR="cpu" if lc.num_gpus == 0 else "cuda"),
        ).remote(model_path, lc, dtype=cfg.model.dtype, temperature=r.temperature, seed=cfg.algorithm.seed)
    return Fleet(pools, samplers, worker, learner)
