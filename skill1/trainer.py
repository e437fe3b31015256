"""The Skill1 training loop (synchronous; the asynchronous actor-learner is issue 6).

    for iteration k:
        pin library version (tag iter-{k-1}) and policy version w
        rollout   B tasks x G episodes: select → utilize → distill            (RolloutWorker, samplers, pools)
        credit    GRPO advantage + trend (selection) + variation (distillation)          (pure, algo/)
        learn     PPO-clip + KL on the generated tokens                                  (Learner)
        sync      one weights packet learner → every sampler                               (object store)
        library   utilities (one batched write), admit new skills, evict, tag iter-{k}       (driver only)
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm import tqdm

from skill1.agent.episode import EpisodeSettings
from skill1.agent.prompts import PROMPT_VERSION
from skill1.algo.advantages import assign_credit
from skill1.algo.batch import credit_inputs, episodes_to_samples
from skill1.config import Skill1Config, save_config
from skill1.envs.registry import make_task_source
from skill1.library.retrieval import RetrievalSettings
from skill1.metrics import MetricsLogger, episode_metrics, fault_metrics
from skill1.models.provision import ensure_policy
from skill1.rollout.worker import EnvFaultPolicy, RolloutRequest
from skill1.runtime import init_ray, start_fleet
from skill1.types import Episode


@dataclass
class TrainResult:
    run_dir: Path
    library_path: Path
    checkpoint: Path
    metrics_path: Path
    library_tags: dict[str, int]
    wandb_dir: str | None
    final_metrics: dict


def fault_policy(cfg: Skill1Config) -> EnvFaultPolicy:
    return EnvFaultPolicy(cfg.env.step_timeout_s, cfg.env.max_env_retries)


def retrieval_settings(cfg: Skill1Config, training: bool) -> RetrievalSettings:
    lib = cfg.library
    return RetrievalSettings(lib.top_k, lib.top_m, lib.exploration if training else 0.0, lib.similarity_weight)


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


def make_batch(cfg: Skill1Config, iteration: int, task_source) -> tuple[list, list[str], list[str]]:
    a = cfg.algorithm
    tasks = task_source.sample("train", a.tasks_per_iteration, seed=a.seed * 1_000_003 + iteration)
    expanded, groups, ids = [], [], []
    for k, t in enumerate(tasks):
        # the index keeps groups apart when a small split repeats a task within one batch
        group = f"{iteration}:{k}:{t.task_id}"
        for g in range(a.group_size):
            expanded.append(t)
            groups.append(group)
            ids.append(f"it{iteration}-{uuid.uuid4().hex[:8]}-{g}")
    return expanded, groups, ids


def train(cfg: Skill1Config) -> TrainResult:
    # before anything starts: missing benchmark data is one clear error, not a crash inside an actor
    task_source, a = make_task_source(cfg.env.name, **cfg.env.source_options()), cfg.algorithm.effective()
    cfg.check_run_dir_free()
    run_dir = cfg.run_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # only reached when empty or overwrite=true
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    model_path = ensure_policy(cfg.model)
    # Ray and wandb spawn their processes before LanceDB is imported (forking after it is unsafe)
    init_ray(cfg)
    logger = MetricsLogger(run_dir, {**cfg.to_dict(), "prompt_version": PROMPT_VERSION}, cfg.logging.wandb_mode, cfg.logging.wandb_project,
                           cfg.logging.wandb_entity, cfg.name)
    from skill1.library import Encoder, SkillLibrary

    encoder = Encoder(cfg.library.encoder)
    library = SkillLibrary.open(str(run_dir / "library"), encoder.name, encoder.dim)
    fleet = start_fleet(cfg, model_path, str(run_dir / "library"), with_learner=True)
    settings, retrieval = EpisodeSettings.from_config(cfg, training=True), retrieval_settings(cfg, training=True)
    policy_version, metrics = 0, {}
    bar = tqdm(range(1, a.iterations + 1), desc="skill1 train", unit="it", disable=not cfg.logging.progress)
    try:
        for it in bar:
            t0 = time.perf_counter()
            tasks, groups, ids = make_batch(cfg, it, task_source)
            pinned = library.version if a.use_library and library.size() > 0 else None
            all_episodes = ray.get(fleet.worker.run.remote(RolloutRequest(
                tasks, groups, ids, settings, retrieval, cfg.rollout.temperature, cfg.rollout.top_p,
                pinned, policy_version, fault_policy(cfg))))
            rollout_stats = ray.get(fleet.worker.stats.remote())
            t1 = time.perf_counter()
            # episodes whose environment kept failing are not the policy's doing: not scored, not learned from
            episodes = [e for e in all_episodes if not e.env_failed]
            credits = compute_credit(episodes, cfg)
            learner_metrics = (ray.get(fleet.learner.update.remote(episodes_to_samples(episodes, credits)))
                               if episodes else {})
            t2 = time.perf_counter()
            packet = fleet.learner.get_weights.remote()
            versions = ray.get([s.load_weights.remote(packet) for s in fleet.samplers])
            if len(set(versions)) != 1:
                raise RuntimeError(f"samplers disagree on the weights version after a sync: {versions}")
            policy_version = versions[0]
            t3 = time.perf_counter()
            lib_metrics = update_library(library, encoder, episodes, it, cfg)
            t4 = time.perf_counter()
            metrics = {**episode_metrics(episodes, credits), **learner_metrics, **lib_metrics,
                       **fault_metrics(all_episodes, rollout_stats),
                       "policy/version": float(policy_version),
                       "time/rollout_s": t1 - t0, "time/learner_s": t2 - t1, "time/sync_s": t3 - t2,
                       "time/library_s": t4 - t3, "time/iteration_s": t4 - t0,
                       "time/episodes_per_s": len(episodes) / (t4 - t0)}
            logger.log(metrics, step=it)
            bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", success=f"{metrics['rollout/success']:.2f}",
                            library=int(metrics["library/size"]), step_s=f"{t4 - t0:.1f}")
            tqdm.write(f"iter {it}: reward {metrics['rollout/reward']:.3f}  success {metrics['rollout/success']:.3f}  "
                       f"valid actions {metrics.get('act/valid_rate', 0):.2f}  library {int(metrics['library/size'])}  "
                       f"step {t4 - t0:.1f}s")
            if cfg.save_every and it % cfg.save_every == 0 and it < a.iterations:
                ray.get(fleet.learner.save.remote(str(run_dir / "checkpoints" / f"iter-{it}")))
        checkpoint = run_dir / "checkpoints" / "final"
        ray.get(fleet.learner.save.remote(str(checkpoint)))
    finally:
        logger.finish()
        fleet.shutdown()
    return TrainResult(run_dir, run_dir / "library", checkpoint, logger.path, library.tags(), logger.wandb_dir,
                       metrics)
