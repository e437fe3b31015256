"""One typed config tree: YAML file + dotted `key=value` overrides (the form wandb sweeps pass).

Sections mirror the YAML one-to-one (`skill1.config_sections`). Everything is validated before any actor starts, and every
problem is reported as one line naming the key (`ConfigError: learner.lr: must be > 0, got -1.0`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skill1.config_sections import (ENV_NAMES, EVAL_SPLITS, PRESETS, AlgorithmConfig, ConfigError, EnvConfig,
                                    LearnerConfig, LibraryConfig, LoggingConfig, ModelConfig, PlacementConfig,
                                    RolloutConfig, check)
from skill1.run_dir import OwnershipError, check_name

__all__ = ["ENV_NAMES", "EVAL_SPLITS", "PRESETS", "AlgorithmConfig", "ConfigError", "EnvConfig", "LearnerConfig",
           "LibraryConfig", "LoggingConfig", "ModelConfig", "PlacementConfig", "RolloutConfig", "Skill1Config",
           "BOUNDS", "check_numbers", "config_from_dict", "load_config", "numeric_keys", "recompute_proximal", "save_config"]

@dataclass
class Skill1Config:
    name: str = "quickstart"
    output_dir: str = "runs"
    ray_address: Optional[str] = None  # None: RAY_ADDRESS if set, else a local instance
    dashboard: bool = False  # local instance only: start Ray's dashboard (on dashboard_host:8265)
    dashboard_host: str = "127.0.0.1"  # loopback unless you mean it: the dashboard is also the job-submission API
    # iterations between resumable checkpoints (learner + optimizer, library tag, rollout cursor), and one
    # after the last iteration; 0: none (a SIGTERM still checkpoints). `skill1 train --resume <run dir>`
    save_every: int = 5
    keep_checkpoints: int = 2  # newest resumable checkpoints kept (0: all)
    # held-out evaluation during training (env.eval_tasks tasks of the eval split, rollout.eval_temperature):
    # before the first and after the last iteration when eval_at_ends, and every eval_every iterations (0: never);
    # logged as eval/* at the iteration they follow (0: before training)
    eval_at_ends: bool = False
    eval_every: int = 0
    overwrite: bool = False  # replace an existing run dir of the same name (else refuse to start)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    library: LibraryConfig = field(default_factory=LibraryConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> "Skill1Config":
        try:  # a run dir is output_dir/name: `name=..` must never reach the working directory
            check_name(self.name)
        except OwnershipError as e:
            raise ConfigError(str(e)) from None
        check(self.save_every >= 0, "save_every", "must be >= 0")
        check(self.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0 (0: keep all)")
        check(self.eval_every >= 0, "eval_every", "must be >= 0 (0: never during training)")
        check_numbers(self)  # first: a NaN must not slip through a section's `x > 0`-style check
        for section in (self.model, self.env, self.rollout, self.library, self.algorithm,
                        self.learner, self.placement, self.logging):
            section.validate()
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Every numeric key, as an interval: "[" "]" inclusive, "(" ")" exclusive; values must also be finite. The
# upper bounds are sanity limits far beyond any real run: a typo (lr=10, 1e9 new tokens, 1e6 CPUs per actor)
# stops here with one line, not hours later as NaN weights or a request the cluster can never place.
BOUNDS: dict[str, str] = {
    "save_every": "[0, 1e7]", "keep_checkpoints": "[0, 1e6]", "eval_every": "[0, 1e7]",
    "model.vocab_size": "[300, 65536]", "model.hidden_size": "[64, 65536]", "model.num_layers": "[1, 48]",
    "model.head_dim": "[32, 128]", "model.warm_start_steps": "[0, 1e8]", "model.warm_start_lr": "(0, 1)",
    "model.warm_start_batch": "[1, 65536]", "model.warm_start_tasks": "[1, 1e8]",
    "model.warm_start_dagger_steps": "[0, 1e8]", "model.warm_start_dagger_tasks": "[1, 1e8]",
    "env.max_steps": "[1, 10000]", "env.invalid_action_penalty": "[0, 100]", "env.history_length": "[0, 10000]",
    "env.num_pools": "[1, 100000]", "env.num_cpus_per_pool": "[0, 1024]", "env.memory_per_pool_mb": "[0, 1e8]",
    "env.step_timeout_s": "(0, 1e6]", "env.max_env_retries": "[0, 1000]", "env.max_pool_restarts": "[-1, 1e6]",
    "env.eval_tasks": "[1, 1e7]", "env.eval_seed": "[0, 4294967295]",
    "rollout.max_staleness": "[0, 1000]", "rollout.max_library_staleness": "[0, 1000]",
    "rollout.num_samplers": "[1, 100000]", "rollout.scripted_latency_s": "[0, 3600]",
    "rollout.max_sampler_restarts": "[-1, 1e6]", "rollout.num_cpus_per_sampler": "[0, 1024]",
    "rollout.num_gpus_per_sampler": "[0, 64]", "rollout.torch_threads": "[1, 1024]",
    "rollout.temperature": "(0, 10]", "rollout.top_p": "(0, 1]", "rollout.eval_temperature": "[0, 10]",
    "rollout.max_new_tokens_query": "[1, 131072]", "rollout.max_new_tokens_rerank": "[1, 131072]",
    "rollout.max_new_tokens_act": "[1, 131072]", "rollout.max_new_tokens_distill": "[1, 131072]",
    "library.top_k": "[1, 1000]", "library.top_m": "[1, 1e6]", "library.alpha": "(0, 1]",
    "library.exploration": "[0, 1000]", "library.similarity_weight": "[0, 1000]",
    "library.initial_utility": "[-1000, 1000]", "library.merge_threshold": "[-1, 1]",
    "library.max_skill_chars": "[16, 1e7]", "library.capacity": "[1, 1e9]", "library.compact_every": "[0, 1e7]",
    "algorithm.iterations": "[1, 1e8]", "algorithm.tasks_per_iteration": "[1, 1e7]",
    "algorithm.group_size": "[1, 65536]", "algorithm.lambda_rerank": "[0, 1000]",
    "algorithm.lambda_distill": "[0, 1000]", "algorithm.intrinsic_coefficient": "[0, 1000]",
    "algorithm.seed": "[0, 4294967295]",
    "learner.zero_stage": "[0, 3]", "learner.num_ranks": "[1, 100000]", "learner.num_cpus": "[0, 1024]",
    "learner.num_gpus": "[0, 64]", "learner.torch_threads": "[1, 1024]", "learner.lr": "(0, 1]",
    "learner.weight_decay": "[0, 10]", "learner.max_grad_norm": "(0, 1e6]", "learner.clip_eps": "(0, 1)",
    "learner.kl_coef": "[0, 1000]", "learner.is_cap": "[1, 1e6]", "learner.ppo_epochs": "[1, 1000]",
    "learner.mini_batches": "[1, 1e6]", "learner.micro_batch_tokens": "[64, 1e9]",
    "learner.weight_sync_bucket_mb": "(0, 1e6]", "learner.max_nonfinite_skips": "[1, 1000]",
    "learner.zero_bucket_elements": "[1e5, 1e10]", "rollout.gpu_memory_utilization": "(0, 1]", "rollout.weight_load_bucket_mb": "(0, 4096)",
    "placement.timeout_s": "(0, 1e7]", "placement.gpu_memory_gb": "(0, 1e4]",
    "logging.sample_skills": "[0, 1e6]",
}


def numeric_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Dotted names of every int / float (or Optional of one) key of the config tree, bools excluded."""
    cls = cls or Skill1Config
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += numeric_keys(hint, f"{prefix}{name}.")
            continue
        args = set(typing.get_args(hint)) - {type(None)} if typing.get_origin(hint) is typing.Union else {hint}
        if args and args <= {int, float}:
            out.append(prefix + name)
    return out


def _interval(spec: str) -> tuple[float, bool, float, bool]:
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    return lo, spec[0] == "(", hi, spec[-1] == ")"


def recompute_proximal(cfg: "Skill1Config", eta: int) -> bool:
    """Whether the learner recomputes proximal log-probs for a batch (see LearnerConfig.recompute_proximal)."""
    return cfg.learner.recompute_proximal and (eta > 0 or cfg.rollout.backend == "vllm")


def check_numbers(cfg: "Skill1Config") -> None:
    """Each numeric key finite and inside `BOUNDS`; one line naming the key and the value otherwise."""
    for key in numeric_keys():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is None:  # Optional keys: None has its own meaning (e.g. initial_utility: the library mean)
            continue
        check(math.isfinite(value), key, f"must be a finite number, got {value}")
        lo, lo_open, hi, hi_open = _interval(BOUNDS[key])
        check(value > lo if lo_open else value >= lo, key, f"must be {'>' if lo_open else '>='} {lo:g}, got {value}")
        check(value < hi if hi_open else value <= hi, key, f"must be {'<' if hi_open else '<='} {hi:g}, got {value}")


def _normalise_override(arg: str) -> str:
    """Accept `key=value` and the `--key=value` form that wandb agents pass."""
    arg = arg[2:] if arg.startswith("--") else arg
    if "=" not in arg:
        raise ConfigError(f"{arg}: overrides are key=value (e.g. learner.lr=1e-5)")
    return arg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Skill1Config:
    """YAML file (optional) + dotted overrides → validated `Skill1Config`, or one-line `ConfigError`."""
    schema = OmegaConf.structured(Skill1Config)
    layers = [schema]
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"--config: no such file: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml's parser errors, undecodable bytes: one line, never a traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{path}: not valid YAML ({first})") from None
        if not isinstance(loaded, DictConfig) or not loaded:
            raise ConfigError(f"{path}: expected a mapping of config sections, got "
                              f"{'an empty file' if not loaded else type(loaded).__name__}")
        layers.append(loaded)
    if overrides:
        layers.append(OmegaConf.from_dotlist([_normalise_override(o) for o in overrides]))
    return _merged(layers)


def config_from_dict(values: dict) -> Skill1Config:
    """A nested dict of config values (any subset of the tree) over the defaults → validated `Skill1Config`, or
    one-line `ConfigError` (the RLlib builder's way in: `skill1.rllib.Skill1Config`)."""
    try:
        layer = OmegaConf.create(values)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None
    return _merged([OmegaConf.structured(Skill1Config), layer])


def _merged(layers: list) -> Skill1Config:
    try:
        merged = OmegaConf.merge(*layers)
        cfg: Skill1Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None
    return cfg.validate()


def save_config(cfg: Skill1Config, path: str | Path) -> None:
    """Written beside and renamed (a resume rewrites a run's config.yaml: a crash must not tear it)."""
    from skill1.checkpoint import write_atomic

    write_atomic(Path(path), OmegaConf.to_yaml(OmegaConf.structured(cfg)))
