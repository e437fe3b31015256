"""`train`: one run from its config: the run dir, the policy, Ray, the logger, the library and the fleet; then
the schedule (`rollout.mode`), the final checkpoint and the held-out evaluations. A resumed run starts from
its newest checkpoint, checked whole before anything in the run dir changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from skill1.agent.prompts import PROMPT_VERSION
from skill1.checkpoint import (Checkpoint, CheckpointError, StopRequest, latest_checkpoint, load_checkpoint,
                               publish_dir, restore_driver_rng, truncate_jsonl)
from skill1.config import ConfigError, Skill1Config, save_config
from skill1.envs.registry import make_task_source
from skill1.evaluate import eval_metrics
from skill1.loop.context import TrainContext
from skill1.loop.steps import sync_weights
from skill1.metrics import MetricsLogger
from skill1.run_dir import DirLock, fresh_run_dir, is_run_dir
from skill1.runtime import init_ray, sampler_python, start_fleet
from skill1.serialization import DecodeError, from_jsonable
from skill1.settings import episode_settings, retrieval_settings
from skill1.tiny_policy.provision import ensure_policy
from skill1.types import RolloutGroup


@dataclass
class TrainResult:
    run_dir: Path
    library_path: Path
    checkpoint: Path
    metrics_path: Path
    library_tags: dict[str, int]
    wandb_dir: str | None
    final_metrics: dict
    stopped_at: int | None = None  # SIGTERM: the iteration checkpointed before stopping (resume from there)


def _prepare_resume(cfg: Skill1Config, checkpoint: Path | None = None) -> Checkpoint:
    """The newest checkpoint (or `checkpoint`, one of the run's), checked whole before anything in the run dir
    changes or Ray starts."""
    from skill1.learner.safe_load import UnsafeCheckpoint, scan

    ckpt = latest_checkpoint(cfg.run_dir) if checkpoint is None else load_checkpoint(checkpoint)
    if ckpt is None:
        raise ConfigError(f"--resume: {cfg.run_dir} has no complete checkpoint (checkpoints/latest); runs save "
                          f"every save_every iterations and on SIGTERM")
    if ckpt.state.prompt_version != PROMPT_VERSION:
        raise ConfigError(f"--resume: {ckpt.path} was trained with prompts {ckpt.state.prompt_version or 'unrecorded'}"
                          f", this Skill1 writes prompts {PROMPT_VERSION}; resuming would train on other prompts "
                          f"than the policy learned (evaluate it, or start a new run from its policy)")
    if ckpt.state.iteration > cfg.algorithm.iterations:
        raise ConfigError(f"algorithm.iterations: {cfg.algorithm.iterations} is behind the checkpoint "
                          f"(iteration {ckpt.state.iteration}); raise it to continue the run")
    try:  # read against our own types: a damaged buffer is one line now, not a crash later
        ckpt.buffer = [from_jsonable(RolloutGroup, g, "buffer") for g in ckpt.buffer]
    except DecodeError as e:
        raise CheckpointError(f"{ckpt.path / 'driver.json'}: damaged ({e})") from None
    try:  # the learner ranks load it weights-only; a file that would need more is refused here, before Ray
        scan(ckpt.learner_dir)
    except UnsafeCheckpoint as e:
        raise CheckpointError(str(e)) from None
    restore_driver_rng(ckpt.driver_rng)
    # what happened after the checkpoint never happened: its metrics and ledger lines go
    truncate_jsonl(cfg.run_dir / "metrics.jsonl", "step", ckpt.state.iteration)
    truncate_jsonl(cfg.run_dir / "trained.jsonl", "iteration", ckpt.state.iteration)
    return ckpt


def train(cfg: Skill1Config, resume: bool = False, restart: bool = False) -> TrainResult:
    """Train `cfg`; `resume=True` continues its run dir from the newest checkpoint instead of starting anew;
    `restart=True` starts a run dir of ours over (a retried job whose first attempt saved no checkpoint)."""
    # before anything starts or is written: missing benchmark data is one clear error, not a crash in an actor
    task_source = make_task_source(cfg.env.name, **cfg.env.source_options())
    sampler_python(cfg)  # a missing vLLM install is a one-line error too
    # one process per run dir, for the whole run: a second quickstart or --resume is one line naming the holder
    with DirLock(cfg.run_dir, "skill1 train"):
        return _train_locked(cfg, resume, restart, task_source)


def open_run(cfg: Skill1Config, resume: bool, restart: bool, task_source,
             checkpoint: Path | None = None) -> TrainContext:
    """Everything a schedule needs, in the order that is safe: the run dir and policy, Ray and wandb (they
    spawn processes before LanceDB is imported: forking after it is unsafe), the library (rolled back to the
    checkpoint's tag on resume), the fleet, and on resume the learner state, synced to every sampler."""
    if resume:  # a library built with another encoder: one line before Ray starts, as in `skill1 library`
        from skill1.library.probe import check_library_encoder

        check_library_encoder(cfg.run_dir / "library", cfg.library.encoder)
    run_dir, ckpt = cfg.run_dir, None
    if resume:
        ckpt = _prepare_resume(cfg, checkpoint)
        model_path = ckpt.state.reference_model
    else:
        fresh_run_dir(run_dir, overwrite=cfg.overwrite or (restart and is_run_dir(run_dir)))
        # a first-time tiny policy learns from demonstrations played with this run's episode settings
        model_path = ensure_policy(cfg.model, settings=episode_settings(cfg, training=True))
    save_config(cfg, run_dir / "config.yaml")
    init_ray(cfg)
    logger = MetricsLogger(run_dir, {**cfg.to_dict(), "prompt_version": PROMPT_VERSION}, cfg.logging.wandb_mode,
                           cfg.logging.wandb_project, cfg.logging.wandb_entity, cfg.name,
                           run_id=ckpt.state.wandb_run_id if ckpt else None, dashboard=cfg.logging.ray_metrics,
                           sample_skills=cfg.logging.sample_skills)
    from skill1.library import Encoder, SkillLibrary

    encoder = Encoder(cfg.library.encoder)
    library = SkillLibrary.open(str(run_dir / "library"), encoder.name, encoder.dim)
    start = ckpt.state.iteration if ckpt is not None else 0
    if ckpt is not None and ckpt.state.library_tag is not None:
        dropped = library.rollback(ckpt.state.library_tag)
        if dropped:
            tqdm.write(f"resume: library rolled back to {ckpt.state.library_tag} (dropped tags {dropped})")
    fleet = start_fleet(cfg, model_path, str(run_dir / "library"), with_learner=True)
    ctx = TrainContext(cfg, run_dir, task_source, logger, encoder, library, fleet,
                       episode_settings(cfg, training=True), retrieval_settings(cfg, training=True),
                       model_path=model_path, start_iteration=start, resumed=ckpt, stop=StopRequest())
    if ckpt is not None:
        try:
            _restore_learner(ctx, ckpt)
        except BaseException:
            close_run(ctx)
            raise
    return ctx


def _restore_learner(ctx: TrainContext, ckpt: Checkpoint) -> None:
    start = ckpt.state.iteration
    ctx.consumed, ctx.trained_groups = set(ckpt.state.consumed_episodes), list(ckpt.state.trained_groups)
    ctx.saved_iteration = start
    version = ctx.fleet.load_state(str(ckpt.learner_dir))
    if version != start:
        raise RuntimeError(f"checkpoint {ckpt.path}: learner at version {version}, state says {start}")
    sync_weights(ctx.fleet, version)  # the samplers start from the reference weights: give them the policy's
    tqdm.write(f"resumed {ctx.run_dir} at iteration {start} from {ckpt.path}")


def close_run(ctx: TrainContext) -> None:
    ctx.stop.restore()
    ctx.logger.finish()
    ctx.fleet.shutdown()


class SteadyBar(tqdm):
    """A progress bar whose rate (and ETA) counts from the end of the first iteration this process runs: that
    one also holds the start-up, the held-out evaluation before training and the asynchronous pipeline's
    fill, and with it in the rate the ETA read 05:05 with a minute left. Until the second, the ETA is "?"."""

    def update(self, n: int = 1):
        steady = getattr(self, "_steady", False)
        shown = super().update(n)
        if not steady and not self.disable:
            self._steady, done, started = True, self.n, self.start_t
            self.reset()  # the rate's averages start again from here (public API; it zeroes the count)
            self.n = self.last_print_n = self.initial = done
            self.start_t = started  # elapsed time stays the run's
            self.refresh()
        return shown


def _train_locked(cfg: Skill1Config, resume: bool, restart: bool, task_source) -> TrainResult:
    ctx = open_run(cfg, resume, restart, task_source)
    bar = SteadyBar(total=cfg.algorithm.iterations, initial=ctx.start_iteration, unit="it",
                    desc=f"skill1 train ({cfg.rollout.mode})", disable=not cfg.logging.progress)
    checkpoint = ctx.run_dir / "checkpoints" / "final"
    try:
        if cfg.eval_at_ends and ctx.resumed is None:
            ctx.evaluate_now(0, 0)
        if cfg.rollout.mode == "async":
            from skill1.loop.asynchronous import run_async

            metrics = run_async(ctx, bar)
        else:
            from skill1.loop.sync import run_sync

            metrics = run_sync(ctx, bar)
        if ctx.stopped_at is None:
            publish_dir(ctx.fleet.save, checkpoint)
            tqdm.write(f"final policy: {checkpoint}")
            if cfg.eval_at_ends:
                metrics = {**metrics, **eval_metrics(ctx.evaluate_now(cfg.algorithm.iterations,
                                                                      cfg.algorithm.iterations))}
    finally:
        bar.close()
        close_run(ctx)
    return TrainResult(ctx.run_dir, ctx.run_dir / "library", checkpoint, ctx.logger.path, ctx.library.tags(),
                       ctx.logger.wandb_dir, metrics, stopped_at=ctx.stopped_at)
