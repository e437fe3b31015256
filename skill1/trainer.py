"""The Skill1 training loop: set-up, the synchronous loop, and what both loops share.

Synchronous (`rollout.mode: sync`), for iteration k:
        pin library version (tag iter-{k-1}) and policy version w
        rollout   B tasks x G episodes: select → utilize → distill            (RolloutWorker, samplers, pools)
        credit    GRPO advantage + trend (selection) + variation (distillation)          (pure, algo/)
        learn     PPO-clip + KL on the generated tokens                                  (Learner)
        sync      one weights packet learner → every sampler                               (object store)
        library   utilities (one batched write), admit new skills, evict, tag iter-{k}       (driver only)

Asynchronous (`rollout.mode: async`, the default): the same steps overlapped, with bounded staleness; see
`skill1.async_trainer`. With `rollout.max_staleness: 0` it reproduces the synchronous loop exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from tqdm import tqdm

from skill1.agent.episode import EpisodeSettings
from skill1.agent.prompts import PROMPT_VERSION
from skill1.algo.advantages import assign_credit
from skill1.algo.batch import credit_inputs, episodes_to_samples
from skill1.checkpoint import (Checkpoint, CheckpointError, StopRequest, TrainState, latest_checkpoint,
                               publish_dir, restore_driver_rng, truncate_jsonl, write_checkpoint)
from skill1.config import ConfigError, Skill1Config, recompute_proximal, save_config
from skill1.envs.registry import make_task_source
from skill1.evaluate import eval_metrics, eval_request, eval_tasks, newest_iteration_tag, summarize
from skill1.library.retrieval import RetrievalSettings
from skill1.metrics import MetricsLogger, episode_metrics, fault_metrics, short_family
from skill1.models.provision import ensure_policy
from skill1.rollout.requests import fault_policy, retrieval_settings
from skill1.rollout.worker import RolloutRequest
from skill1.run_dir import DirLock, fresh_run_dir, is_run_dir
from skill1.runtime import init_ray, sampler_python, start_fleet
from skill1.serialization import DecodeError, from_jsonable, to_jsonable
from skill1.types import Episode, RolloutGroup


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


def update_library(library, encoder, episodes: list[Episode], iteration: int,
                   cfg: Skill1Config) -> dict[str, float]:
    """The driver is the library's only writer: utilities, admission, eviction, then the iteration tag."""
    outcomes: dict[str, list[float]] = {}
    for ep in episodes:
        if ep.chosen_skill_id is not None:
            outcomes.setdefault(ep.chosen_skill_id, []).append(ep.outcome)
    if outcomes:
        library.update_utilities(outcomes, cfg.library.alpha)
    report = None
    drafts = [ep for ep in episodes if ep.draft is not None]
    if drafts and cfg.algorithm.effective().use_library:
        report = library.add([ep.draft for ep in drafts], encoder.encode([ep.draft.scenario for ep in drafts]),
                             iteration=iteration, source_tasks=[ep.task.task_id for ep in drafts],
                             source_episodes=[ep.episode_id for ep in drafts],
                             initial_utility=cfg.library.initial_utility,
                             merge_threshold=cfg.library.merge_threshold, max_chars=cfg.library.max_skill_chars)
    retired = library.evict(cfg.library.capacity)
    version = library.tag(f"iter-{iteration}")
    compacted = 0
    if cfg.library.compact_every and iteration % cfg.library.compact_every == 0:
        compacted = library.compact()
    skills = library.all_skills()
    return {
        "library/size": float(len(skills)),
        "library/version": float(version),
        "library/accepted": float(len(report.accepted)) if report else 0.0,
        "library/merged": float(len(report.merged)) if report else 0.0,
        "library/rejected": float(len(report.rejected)) if report else 0.0,
        "library/retired": float(len(retired)),
        "library/skills_updated": float(len(outcomes)),
        "library/mean_utility": sum(s.utility for s in skills) / len(skills) if skills else 0.0,
        "library/versions_compacted": float(compacted),
    }


def compute_credit(episodes: list[Episode], cfg: Skill1Config) -> list:
    a = cfg.algorithm.effective()
    return assign_credit(
        [credit_inputs(e, cfg.env.invalid_action_penalty) for e in episodes],
        normalize_std=a.normalize_std, selection_on=a.selection_credit, distillation_on=a.distillation_credit,
        lambda_rerank=a.lambda_rerank, lambda_distill=a.lambda_distill,
        u_hat_aggregation=cfg.library.u_hat_aggregation, selection_credit_type=a.selection_credit_type,
        intrinsic_coefficient=a.intrinsic_coefficient, intrinsic_group_norm=a.intrinsic_group_norm,
        singleton_group=a.singleton_group_advantage)


B_SEED = 1_000_003


class TaskPlan:
    """Which task each rollout group plays, by group number: groups b*B .. b*B+B-1 play the B tasks of
    batch b+1, drawn with the iteration seed the synchronous loop has always used. Both loops name groups
    and episodes from here, so a run's ids do not depend on the schedule that produced them."""

    def __init__(self, cfg: Skill1Config, task_source):
        self.cfg, self.source, self._batches = cfg, task_source, {}

    def task(self, seq: int):
        a = self.cfg.algorithm
        batch = seq // a.tasks_per_iteration + 1
        if batch not in self._batches:
            self._batches = {batch: self.source.sample("train", a.tasks_per_iteration, seed=a.seed * B_SEED + batch)}
        return self._batches[batch][seq % a.tasks_per_iteration]

    def group(self, seq: int) -> tuple[list, list[str], list[str]]:
        """(tasks, group ids, episode ids) of group `seq`: G copies of one task."""
        task, g = self.task(seq), self.cfg.algorithm.group_size
        return [task] * g, [f"{seq}:{task.task_id}"] * g, [f"g{seq}-{j}" for j in range(g)]


def make_batch(cfg: Skill1Config, iteration: int, task_source) -> tuple[list, list[str], list[str]]:
    """The B groups of one synchronous iteration (1-based), concatenated in group order."""
    plan, b = TaskPlan(cfg, task_source), cfg.algorithm.tasks_per_iteration
    tasks, groups, ids = [], [], []
    for seq in range((iteration - 1) * b, iteration * b):
        t, g, i = plan.group(seq)
        tasks += t
        groups += g
        ids += i
    return tasks, groups, ids


@dataclass
class TrainContext:
    """Everything a training loop drives; built once by `train`."""

    cfg: Skill1Config
    run_dir: Path
    task_source: object
    logger: MetricsLogger
    encoder: object
    library: object
    fleet: object
    settings: EpisodeSettings
    retrieval: RetrievalSettings
    model_path: str = ""
    start_iteration: int = 0  # iterations already trained (a resumed run)
    resumed: Checkpoint | None = None
    stop: StopRequest | None = None  # SIGTERM: checkpoint at the next consistent point, then stop
    consumed: set[str] = field(default_factory=set)  # episode ids trained so far (the ledger)
    trained_groups: list[int] = field(default_factory=list)
    saved_iteration: int = -1  # the newest checkpoint written by this process
    stopped_at: int | None = None  # the iteration a SIGTERM checkpointed

    def pinned_library(self) -> int | None:
        """The version rollouts retrieve from: the newest `iter-k` tag's, never an untagged head (compaction
        removes untagged versions while groups may still read them); None before the first tag or when empty."""
        if not self.cfg.algorithm.effective().use_library or self.library.size() == 0:
            return None
        return newest_iteration_tag(self.library.tags())[1]

    def sync_weights(self, version: int) -> int:
        """Learner -> every sampler (`learner.weight_sync` transport); returns the version they all hold."""
        acks, others = self.fleet.push_weights(version)
        versions = ray.get(acks)
        ray.get(others)
        if set(versions) != {version}:
            raise RuntimeError(f"weights sync: samplers hold {versions}, the learner {version}")
        return version

    def record_trained(self, iteration: int, seqs: list[int], episodes: list[Episode]) -> None:
        """Append the batch to the consumed ledger; an episode id trained twice is a bug, never data."""
        ids = [e.episode_id for e in episodes]
        again = sorted(self.consumed.intersection(ids))
        if again or len(set(ids)) != len(ids):
            raise RuntimeError(f"iteration {iteration}: episodes trained before: {again[:5] or ids}")
        self.consumed.update(ids)
        self.trained_groups.extend(seqs)
        with (self.run_dir / "trained.jsonl").open("a") as f:
            f.write(json.dumps({"iteration": iteration, "groups": seqs, "episodes": ids}) + "\n")

    def report(self, it: int, metrics: dict, step_s: float, bar) -> None:
        self.logger.log(metrics, step=it, skills=self.library.all_skills() if self.logger.run is not None else None)
        bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", success=f"{metrics['rollout/success']:.2f}",
                        library=int(metrics["library/size"]), step_s=f"{step_s:.1f}")
        tqdm.write(f"iter {it}: reward {metrics['rollout/reward']:.3f}  success {metrics['rollout/success']:.3f}  "
                   f"valid actions {metrics.get('act/valid_rate', 0):.2f}  library {int(metrics['library/size'])}  "
                   f"step {step_s:.1f}s")

    def eval_request(self, policy_version: int):
        """Held-out tasks with the samplers as they are (holding `policy_version`) and the newest library tag."""
        return eval_request(self.cfg, eval_tasks(self.cfg), self.pinned_library(), policy_version)

    def eval_due(self, it: int) -> bool:
        """A held-out evaluation after iteration `it` during training (the one after the last is `eval_at_ends`')."""
        every = self.cfg.eval_every
        return bool(every) and it % every == 0 and it < self.cfg.algorithm.iterations

    def held_out(self, it: int, episodes: list[Episode]) -> dict:
        """Log a held-out evaluation's episodes as eval/* at iteration `it` (0: before training)."""
        report = summarize(episodes)
        self.logger.log(eval_metrics(report), step=it)
        fams = "  ".join(f"{short_family(f)} {r:.2f}" for f, r in report["success_by_family"].items())
        tqdm.write(f"held-out eval after iteration {it}: success {report['success']:.3f}  "
                   f"valid actions {report['valid_action_rate']:.2f}  ({fams})")
        return report

    def evaluate_now(self, it: int, policy_version: int) -> dict:
        """A held-out evaluation with the worker idle (not streaming)."""
        return self.held_out(it, ray.get(self.fleet.worker.run.remote(self.eval_request(policy_version))))

    def due(self, it: int) -> bool:
        """A periodic checkpoint after iteration `it` (every `save_every`, and after the last one)."""
        return bool(self.cfg.save_every) and (it % self.cfg.save_every == 0 or it == self.cfg.algorithm.iterations)

    def checkpoint(self, it: int, next_seq: int, running_seqs=(), buffer=(), reason: str = "periodic") -> Path:
        """A resumable checkpoint after iteration `it`; call only with nothing in flight on the learner."""
        lib_tag = f"iter-{it}" if it > 0 else None
        state = TrainState(
            iteration=it, policy_version=it, library_tag=lib_tag,
            library_version=self.library.tags().get(lib_tag, self.library.version) if lib_tag else self.library.version,
            next_seq=next_seq, running_seqs=sorted(running_seqs), trained_groups=list(self.trained_groups),
            consumed_episodes=sorted(self.consumed), reference_model=self.model_path,
            wandb_run_id=self.logger.run_id, reason=reason, prompt_version=PROMPT_VERSION)
        path = write_checkpoint(self.run_dir, state, [to_jsonable(g) for g in buffer], self.fleet.save_state,
                                self.cfg.keep_checkpoints, learner_ranks=len(self.fleet.learners))
        self.saved_iteration = it
        tqdm.write(f"checkpoint ({reason}): {path}")
        return path

    def stop_now(self, it: int, next_seq: int, running_seqs=(), buffer=()) -> None:
        """SIGTERM: make sure iteration `it` is checkpointed, and mark the run as stopped there."""
        if self.saved_iteration != it:
            self.checkpoint(it, next_seq, running_seqs, buffer, reason=self.stop.requested or "stop")
        self.stopped_at = it


def busy_fractions(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Share of `wall` each sampler / pool had a call in flight: where rollout time went."""
    out: dict[str, list[float]] = {}
    for name, total in after.items():
        out.setdefault(name.split("-")[0], []).append((total - before.get(name, 0.0)) / max(wall, 1e-9))
    return {f"time/{kind}_busy": sum(v) / len(v) for kind, v in out.items()}


def _wait_or_stop(ref, stop) -> bool:
    """Wait for `ref`; False if a stop was requested first (the call is abandoned)."""
    while not ray.wait([ref], timeout=1.0)[0]:
        if stop:
            return False
    return True


def run_sync(ctx: TrainContext, bar) -> dict:
    """rollout -> credit -> learn -> sync -> library, one after another: the reference algorithm."""
    cfg, fleet, metrics = ctx.cfg, ctx.fleet, {}
    b = cfg.algorithm.tasks_per_iteration
    policy_version, busy = ctx.start_iteration, {}
    for it in range(ctx.start_iteration + 1, cfg.algorithm.iterations + 1):
        t0 = time.perf_counter()
        tasks, groups, ids = make_batch(cfg, it, ctx.task_source)
        run = fleet.worker.run.remote(RolloutRequest(
            tasks, groups, ids, ctx.settings, ctx.retrieval, cfg.rollout.temperature, cfg.rollout.top_p,
            ctx.pinned_library(), policy_version, fault_policy(cfg)))
        # a SIGTERM before or during the rollout: nothing changed since iteration it-1: that is what is saved
        if ctx.stop or not _wait_or_stop(run, ctx.stop):
            ctx.stop_now(it - 1, (it - 1) * b)
            return metrics
        all_episodes = ray.get(run)
        rollout_stats, new_busy = ray.get([fleet.worker.stats.remote(), fleet.worker.busy.remote()])
        t1 = time.perf_counter()
        # episodes whose environment kept failing are not the policy's doing: not scored, not learned from
        episodes = [e for e in all_episodes if not e.env_failed]
        credits = compute_credit(episodes, cfg)
        # an empty batch still makes a (no-op) update: one policy version per iteration, always
        fleet.sleep_samplers()  # colocated vLLM: its weights and KV cache leave the GPU the learner now uses
        learner_metrics = ray.get(fleet.update(episodes_to_samples(episodes, credits),
                                               recompute_proximal=recompute_proximal(cfg, eta=0)))[0]
        fleet.wake_samplers()
        t2 = time.perf_counter()
        fleet.heal(rollout_stats.sampler_restarts > 0)
        policy_version = ctx.sync_weights(int(learner_metrics["learner/version"]))
        t3 = time.perf_counter()
        lib_metrics = update_library(ctx.library, ctx.encoder, episodes, it, cfg)
        t4 = time.perf_counter()
        metrics = {**episode_metrics(episodes, credits), **learner_metrics, **lib_metrics,
                   **fault_metrics(all_episodes, rollout_stats), **busy_fractions(busy, new_busy, t4 - t0),
                   "policy/version": float(policy_version),
                   "time/rollout_s": t1 - t0, "time/learner_s": t2 - t1, "time/sync_s": t3 - t2,
                   "time/library_s": t4 - t3, "time/iteration_s": t4 - t0,
                   "time/learner_busy": (t2 - t1) / (t4 - t0),
                   "time/episodes_per_s": len(episodes) / (t4 - t0)}
        busy = new_busy
        ctx.record_trained(it, list(range((it - 1) * b, it * b)), episodes)
        bar.update(1)
        ctx.report(it, metrics, t4 - t0, bar)
        if ctx.due(it):
            ctx.checkpoint(it, it * b)
        if ctx.eval_due(it):
            ctx.evaluate_now(it, policy_version)
    if ctx.stop:
        ctx.stop_now(cfg.algorithm.iterations, cfg.algorithm.iterations * b)
    return metrics


def _prepare_resume(cfg: Skill1Config) -> Checkpoint:
    """The newest checkpoint, checked whole before anything in the run dir changes or Ray starts."""
    from skill1.learner.safe_load import UnsafeCheckpoint, scan

    ckpt = latest_checkpoint(cfg.run_dir)
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


def _train_locked(cfg: Skill1Config, resume: bool, restart: bool, task_source) -> TrainResult:
    a = cfg.algorithm.effective()
    if resume:  # a library built with another encoder: one line before Ray starts, as in `skill1 library`
        from skill1.library.probe import check_library_encoder

        check_library_encoder(cfg.run_dir / "library", cfg.library.encoder)
    run_dir = cfg.run_dir
    ckpt = None
    if resume:
        ckpt = _prepare_resume(cfg)
        model_path = ckpt.state.reference_model
    else:
        fresh_run_dir(run_dir, overwrite=cfg.overwrite or (restart and is_run_dir(run_dir)))
        # a first-time tiny policy learns from demonstrations played with this run's episode settings
        model_path = ensure_policy(cfg.model, settings=EpisodeSettings.from_config(cfg, training=True))
    save_config(cfg, run_dir / "config.yaml")
    # Ray and wandb spawn their processes before LanceDB is imported (forking after it is unsafe)
    init_ray(cfg)
    logger = MetricsLogger(run_dir, {**cfg.to_dict(), "prompt_version": PROMPT_VERSION}, cfg.logging.wandb_mode,
                           cfg.logging.wandb_project, cfg.logging.wandb_entity, cfg.name,
                           run_id=ckpt.state.wandb_run_id if ckpt else None, dashboard=cfg.logging.ray_metrics,
                           sample_skills=cfg.logging.sample_skills)
    from skill1.library import Encoder, SkillLibrary

    encoder = Encoder(cfg.library.encoder)
    library = SkillLibrary.open(str(run_dir / "library"), encoder.name, encoder.dim)
    start = 0
    if ckpt is not None:
        start = ckpt.state.iteration
        if ckpt.state.library_tag is not None:
            dropped = library.rollback(ckpt.state.library_tag)
            if dropped:
                tqdm.write(f"resume: library rolled back to {ckpt.state.library_tag} (dropped tags {dropped})")
    fleet = start_fleet(cfg, model_path, str(run_dir / "library"), with_learner=True)
    ctx = TrainContext(cfg, run_dir, task_source, logger, encoder, library, fleet,
                       EpisodeSettings.from_config(cfg, training=True), retrieval_settings(cfg, training=True),
                       model_path=model_path, start_iteration=start, resumed=ckpt, stop=StopRequest())
    bar = tqdm(total=a.iterations, initial=start, desc=f"skill1 train ({cfg.rollout.mode})", unit="it",
               disable=not cfg.logging.progress)
    checkpoint = run_dir / "checkpoints" / "final"
    try:
        if ckpt is not None:
            ctx.consumed, ctx.trained_groups = set(ckpt.state.consumed_episodes), list(ckpt.state.trained_groups)
            ctx.saved_iteration = start
            version = fleet.load_state(str(ckpt.learner_dir))
            if version != start:
                raise RuntimeError(f"checkpoint {ckpt.path}: learner at version {version}, state says {start}")
            ctx.sync_weights(version)  # the samplers start from the reference weights: give them the policy's
            tqdm.write(f"resumed {run_dir} at iteration {start} from {ckpt.path}")
        if cfg.eval_at_ends and ckpt is None:
            ctx.evaluate_now(0, 0)
        if cfg.rollout.mode == "async":
            from skill1.async_trainer import run_async

            metrics = run_async(ctx, bar)
        else:
            metrics = run_sync(ctx, bar)
        if ctx.stopped_at is None:
            publish_dir(fleet.save, checkpoint)
            if cfg.eval_at_ends:
                metrics = {**metrics, **eval_metrics(ctx.evaluate_now(cfg.algorithm.iterations,
                                                                      cfg.algorithm.iterations))}
    finally:
        ctx.stop.restore()
        bar.close()
        logger.finish()
        fleet.shutdown()
    return TrainResult(run_dir, run_dir / "library", checkpoint, logger.path, library.tags(), logger.wandb_dir,
                       metrics, stopped_at=ctx.stopped_at)
