"""Skill1 as an RLlib Algorithm (ray[rllib], the new API stack's classes): the builder, `algo.train()`,
checkpoints, and Ray Tune searches.

    config = (Skill1Config.from_yaml("pipelines/configs/quickstart.yaml")
              .environment(env="builtin").learners(num_learners=1).training(lr=1e-3))
    algo = config.build_algo()
    algo.train()                      # one Skill1 iteration: rollout → credit → update → sync → library
    path = algo.save_to_path()        # our checkpoint (learner, library tag, run state) underneath
    algo.stop()
    algo = Skill1.from_checkpoint(path)

What of RLlib is used, and what is replaced (and why):
  used      AlgorithmConfig (builder methods, to_dict/from_dict, Tune's param_space), Algorithm.step / train
            (iteration counting, timers, `evaluation_interval`, the result dict), MetricsLogger, the
            Checkpointable files (`save_to_path`, `from_checkpoint`), Trainable's Tune integration
  replaced  `setup` (no EnvRunnerGroup, RLModule or LearnerGroup: our samplers are LLM engines and our learner
            is DeepSpeed: they are the fleet `skill1.runtime.start_fleet` starts, as `skill1 train` does),
            `training_step` (one iteration of `skill1.loop`'s schedules), `evaluate` (our held-out tasks),
            `get_state`/`set_state`/`restore_from_path` (our checkpoint), `default_resource_request` (bundles
            for our actors), `cleanup` (our actors and the run lock).
Our YAML tree (`skill1.config`) stays the single source of truth: builder calls write our keys into it, except
RLlib's own fields that mean one of our keys (`RLLIB_FIELDS`: lr, env, num_env_runners, ...), held once in
RLlib's field and read into the tree by `typed()`; `validate` checks it with the same code as the CLI (one
line naming the key).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.utils import force_list
from ray.rllib.utils.checkpoints import Checkpointable
from ray.tune import PlacementGroupFactory

from skill1 import config as typed
from skill1.config import ConfigError
from skill1.envs.registry import make_task_source
from skill1.evaluate import eval_metrics
from skill1.run_dir import DirLock
from skill1.runtime import hosted_bundles

CHECKPOINT_FILE = "skill1_checkpoint.json"  # inside an RLlib checkpoint: which run and which of its checkpoints

# RLlib's own fields that mean one of our keys. Such a value lives in RLlib's field only and is read into our
# tree by `typed()`: written to both, a Tune search space over it became two dimensions of the grid, and half
# the trials ran a value other than the one Tune reported.
RLLIB_FIELDS = {
    "env": "env.name",
    "num_env_runners": "env.num_pools",
    "num_cpus_per_env_runner": "env.num_cpus_per_pool",
    "num_learners": "learner.num_ranks",  # 0 (RLlib: learn in the driver) reads as 1: ours never learns there
    "num_gpus_per_learner": "learner.num_gpus",
    "num_cpus_per_learner": "learner.num_cpus",
    "lr": "learner.lr",
    "grad_clip": "learner.max_grad_norm",
    "num_epochs": "learner.ppo_epochs",
}


def set_key(tree: dict, dotted: str, value) -> None:
    """Set `dotted` (e.g. learner.lr) in a nested dict, making the sections on the way."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


class Skill1Config(AlgorithmConfig):
    """RLlib's builder over our config tree: `self.skill1` holds the values set so far (a nested dict of
    `skill1.config` keys over its defaults)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or Skill1)
        self.skill1: dict = {}
        self.rllib_fields: list[str] = []  # the RLLIB_FIELDS set through a builder method, in the order set
        self.log_sys_usage = False  # RLlib's per-iteration system monitor (and its "install gputil" line)

    # --- our YAML, both ways -------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] | tuple = ()) -> "Skill1Config":
        out = cls()
        out.skill1 = typed.load_config(path, list(overrides)).to_dict()
        return out

    def to_yaml(self, path: str | Path) -> None:
        typed.save_config(self.typed(), path)

    def typed(self) -> typed.Skill1Config:
        """The validated `skill1.config.Skill1Config` (one-line `ConfigError` naming the key): our tree, with
        the RLlib fields that were set read into their keys."""
        import copy

        tree = copy.deepcopy(self.skill1)
        for field in self.rllib_fields:
            value = getattr(self, field)
            set_key(tree, RLLIB_FIELDS[field], max(1, value) if field == "num_learners" else value)
        return typed.config_from_dict(tree)

    def put(self, dotted: str, value) -> None:
        """One of our keys; an RLlib field set earlier for the same key no longer overrides it (last one wins)."""
        set_key(self.skill1, dotted, value)
        self.rllib_fields = [f for f in self.rllib_fields if RLLIB_FIELDS[f] != dotted]

    def _mark(self, **fields) -> None:
        for field, value in fields.items():
            if value is not NotProvided and not (field == "num_cpus_per_learner" and value == "auto"):
                self.rllib_fields = [f for f in self.rllib_fields if f != field] + [field]

    def overrides(self, *dotted: str) -> "Skill1Config":
        """Any of our keys as `key=value`, as on the command line."""
        from omegaconf import OmegaConf

        for item in dotted:
            item = item[2:] if item.startswith("--") else item
            if "=" not in item:
                raise ConfigError(f"{item}: overrides are key=value (e.g. learner.lr=1e-5)")
            key = item.partition("=")[0]
            self.put(key, _leaf(OmegaConf.to_container(OmegaConf.from_dotlist([item])), key))
        return self

    # --- RLlib's builder methods, mapped onto our keys ------------------------------------------------------------
    def environment(self, env=NotProvided, *, env_config=NotProvided, **kwargs) -> "Skill1Config":
        """`env` → `env.name` (builtin, alfworld, webshop); `env_config` → `env.*` keys."""
        super().environment(env=env, **kwargs)  # env_config stays ours alone (a search space in it: one dimension)
        self._mark(env=env)
        if env_config is not NotProvided:
            for key, value in dict(env_config).items():
                self.put(f"env.{key}", value)
        return self

    def env_runners(self, *, num_env_runners=NotProvided, num_cpus_per_env_runner=NotProvided,
                    num_samplers=NotProvided, **kwargs) -> "Skill1Config":
        """`num_env_runners` → `env.num_pools` (environment actors), `num_cpus_per_env_runner` →
        `env.num_cpus_per_pool`, `num_samplers` → `rollout.num_samplers` (LLM engines)."""
        super().env_runners(num_env_runners=num_env_runners, num_cpus_per_env_runner=num_cpus_per_env_runner,
                            **kwargs)
        self._mark(num_env_runners=num_env_runners, num_cpus_per_env_runner=num_cpus_per_env_runner)
        if num_samplers is not NotProvided:
            self.put("rollout.num_samplers", num_samplers)
        return self

    def learners(self, *, num_learners=NotProvided, num_gpus_per_learner=NotProvided,
                 num_cpus_per_learner=NotProvided, **kwargs) -> "Skill1Config":
        """`num_learners` → `learner.num_ranks` (0 means one rank: our learner never runs in the driver),
        `num_gpus_per_learner` / `num_cpus_per_learner` → `learner.num_gpus` / `learner.num_cpus`."""
        super().learners(num_learners=num_learners, num_gpus_per_learner=num_gpus_per_learner,
                         num_cpus_per_learner=num_cpus_per_learner, **kwargs)
        self._mark(num_learners=num_learners, num_gpus_per_learner=num_gpus_per_learner,
                   num_cpus_per_learner=num_cpus_per_learner)
        return self

    def training(self, *, lr=NotProvided, grad_clip=NotProvided, num_epochs=NotProvided, algorithm=NotProvided,
                 learner=NotProvided, **kwargs) -> "Skill1Config":
        """`lr`, `grad_clip`, `num_epochs` → `learner.lr`, `learner.max_grad_norm`, `learner.ppo_epochs`;
        `algorithm={...}` / `learner={...}` set any key of those sections (e.g. preset, group_size, kl_coef)."""
        super().training(lr=lr, grad_clip=grad_clip, num_epochs=num_epochs, **kwargs)
        self._mark(lr=lr, grad_clip=grad_clip, num_epochs=num_epochs)
        for section, values in (("algorithm", algorithm), ("learner", learner)):
            if values is not NotProvided:
                for key, value in dict(values).items():
                    self.put(f"{section}.{key}", value)
        return self

    def evaluation(self, *, evaluation_interval=NotProvided, **kwargs) -> "Skill1Config":
        """`evaluation_interval`: RLlib runs `algo.evaluate()` (our held-out tasks, `env.eval_tasks` of them)
        every that many iterations. (`evaluation_duration` is RLlib's own field: RLlib replays every
        `evaluation_*` field through this method when it rebuilds a config from a dict, so none is mapped onto
        our keys.)"""
        super().evaluation(evaluation_interval=evaluation_interval, **kwargs)
        return self

    def skill_library(self, **keys) -> "Skill1Config":
        """Any `library.*` key: top_k, top_m, alpha, exploration, capacity, merge_threshold, ..."""
        for key, value in keys.items():
            self.put(f"library.{key}", value)
        return self

    def validate(self) -> None:
        super().validate()
        self.typed()  # raises ConfigError: one line naming the key


def _leaf(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


class Skill1(Algorithm):
    """Skill1 behind RLlib's Algorithm interface; `train()` is one iteration of `skill1.loop`'s schedule
    (`rollout.mode`), on the same fleet `skill1 train` starts. The fleet starts on the first `train`,
    `evaluate` or save, so building and restoring are cheap."""

    @classmethod
    def get_default_config(cls) -> Skill1Config:
        return Skill1Config()

    @classmethod
    def default_resource_request(cls, config) -> PlacementGroupFactory:
        """The trial's placement group: bundle 0 for this actor, then one per actor of its fleet, each placed by
        index (`skill1.runtime.hosted_bundles`)."""
        if isinstance(config, dict):
            config = cls.get_default_config().update_from_dict(config)
        return PlacementGroupFactory(hosted_bundles(_for_tune(config.typed()))[0])

    def setup(self, config) -> None:
        # not Algorithm.setup: it would build EnvRunners, an RLModule and a LearnerGroup we do not use
        self.callbacks = [cb() for cb in force_list(self.config.callbacks_class)]
        self.evaluation_config = self.config.get_evaluation_config_object()
        self._set_up_metrics()
        cfg = self.config.typed()
        if self._storage is not None:  # a Tune trial: its own run dir (`<trial dir>/run-<hash>`), actor names
            cfg = _for_tune(cfg)       # (named after the run) and placement
            trial = str(self._storage.trial_fs_path)
            cfg.output_dir, cfg.name = trial, "run-" + hashlib.sha1(trial.encode()).hexdigest()[:8]
        # the RLlib loop decides when to evaluate (`evaluation_interval`) and when to checkpoint
        cfg.eval_every, cfg.eval_at_ends, cfg.save_every = 0, False, 0
        self.run_cfg, self.ctx, self.schedule, self.lock, self._resume_from = cfg, None, None, None, None

    # --- the run, opened on first use ------------------------------------------------------------------------------
    def _run(self):
        if self.schedule is None:
            from skill1.loop.train import open_run

            cfg = self.run_cfg
            self.lock = DirLock(cfg.run_dir, "skill1 train").acquire()
            try:
                task_source = make_task_source(cfg.env.name, **cfg.env.source_options())
                self.ctx = open_run(cfg, resume=self._resume_from is not None, restart=False,
                                    task_source=task_source, checkpoint=self._resume_from)
            except BaseException:
                self.lock.release()
                raise
            if cfg.rollout.mode == "async":
                from skill1.loop.asynchronous import AsyncSchedule

                self.schedule = AsyncSchedule(self.ctx)
            else:
                from skill1.loop.sync import SyncSchedule

                self.schedule = SyncSchedule(self.ctx)
        return self.schedule

    def restore_env_runners(self, env_runner_group) -> list:
        return []  # no EnvRunners: our env pools are restarted by Ray and re-queued by the rollout worker

    def training_step(self) -> None:
        schedule = self._run()
        metrics = schedule.step(schedule.done + 1) if hasattr(schedule, "done") else schedule.step()
        if metrics is None:
            raise RuntimeError("skill1: the run was asked to stop (SIGTERM); it is checkpointed")
        self.metrics.log_value(("env_runners", "episode_return_mean"), metrics["rollout/reward"], reduce="item")
        self.metrics.log_value(("env_runners", "num_episodes"), metrics.get("rollout/episodes", 0.0), reduce="item")
        self.metrics.log_value(("env_runners", "success_mean"), metrics["rollout/success"], reduce="item")
        for key, value in metrics.items():
            namespace, _, name = key.partition("/")
            if namespace == "learner":
                self.metrics.log_value(("learners", name), value, reduce="item")
            self.metrics.log_value(("skill1", key), value, reduce="item")

    def evaluate(self, parallel_train_future=None) -> dict:
        return eval_metrics(self._run().evaluate())

    # --- checkpoints: RLlib's files plus a pointer to ours ----------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        return {"metrics_logger": self.metrics.get_state(), "training_iteration": self.iteration}

    def set_state(self, state: dict) -> None:
        if "metrics_logger" in state:
            self.metrics.set_state(state["metrics_logger"])
        if "training_iteration" in state:
            self._iteration = state["training_iteration"]

    def get_checkpointable_components(self) -> list:
        return []

    def save_to_path(self, path=None, *, state=None, filesystem=None, use_msgpack=False) -> str:
        ours = self._run().save()  # the learner is idle between iterations: a consistent point
        path = super().save_to_path(path, state=state, filesystem=filesystem, use_msgpack=use_msgpack)
        Path(path, CHECKPOINT_FILE).write_text(json.dumps({"run_dir": str(self.run_cfg.run_dir.resolve()),
                                                           "checkpoint": str(ours.resolve())}))
        return path

    def restore_from_path(self, path, *args, **kwargs) -> None:
        Checkpointable.restore_from_path(self, path, *args, **kwargs)  # not Algorithm's: it needs EnvRunners
        pointer = json.loads(Path(path, CHECKPOINT_FILE).read_text())
        if self.schedule is not None:
            self._close()
        run_dir = Path(pointer["run_dir"])
        self.run_cfg.output_dir, self.run_cfg.name = str(run_dir.parent), run_dir.name
        self._resume_from = Path(pointer["checkpoint"])

    def _close(self) -> None:
        from skill1.loop.train import close_run

        try:
            self.schedule.close()
        finally:
            close_run(self.ctx)
            self.lock.release()
            self.ctx = self.schedule = self.lock = None

    def cleanup(self) -> None:
        if getattr(self, "schedule", None) is not None:
            self._close()
        super().cleanup()


def _for_tune(cfg: typed.Skill1Config) -> typed.Skill1Config:
    """Inside a Tune trial every actor goes into the trial's placement group, by bundle index."""
    cfg.placement.hosted = True
    return cfg
