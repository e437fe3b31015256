"""The run a schedule drives (`TrainContext`, built once by `skill1.loop.train`): what the rollouts pin, the
ledger of trained episodes, the end of an iteration (report, checkpoint), held-out evaluations, and stopping."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from tqdm import tqdm

from skill1.agent.prompts import PROMPT_VERSION
from skill1.checkpoint import Checkpoint, StopRequest, TrainState, write_checkpoint
from skill1.config import Skill1Config
from skill1.evaluate import eval_metrics, eval_request, eval_tasks, newest_iteration_tag, summarize
from skill1.loop.steps import Batch
from skill1.loop.tasks import TaskPlan
from skill1.metrics import MetricsLogger, short_family
from skill1.serialization import to_jsonable
from skill1.settings import fault_policy
from skill1.types import Episode, RolloutRequest

if TYPE_CHECKING:
    from skill1.library import Encoder, SkillLibrary
    from skill1.runtime import Fleet
    from skill1.types import EpisodeSettings, RetrievalSettings


@dataclass
class TrainContext:
    """Everything a schedule drives."""

    cfg: Skill1Config
    run_dir: Path
    task_source: object
    logger: MetricsLogger
    encoder: Encoder
    library: SkillLibrary
    fleet: Fleet
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
    plan: TaskPlan | None = None

    def __post_init__(self) -> None:
        if self.plan is None and self.cfg is not None:
            self.plan = TaskPlan(self.cfg, self.task_source)

    # --- what a rollout plays and pins ---------------------------------------------------------------------------
    def pinned_library(self) -> int | None:
        """The version rollouts retrieve from: the newest `iter-k` tag's, never an untagged head (compaction
        removes untagged versions while groups may still read them); None before the first tag or when empty."""
        if not self.cfg.algorithm.effective().use_library or self.library.size() == 0:
            return None
        return newest_iteration_tag(self.library.tags())[1]

    def rollout_request(self, seqs, library_version: int | None, policy_version: int, tag: str = "") -> RolloutRequest:
        """Groups `seqs` (their tasks from the task plan) as one training request."""
        tasks, groups, ids = self.plan.groups(seqs)
        rollout = self.cfg.rollout
        return RolloutRequest(tasks, groups, ids, self.settings, self.retrieval, rollout.temperature, rollout.top_p,
                              library_version, policy_version, fault_policy(self.cfg), tag=tag)

    # --- the end of an iteration ---------------------------------------------------------------------------------
    def finish_iteration(self, batch: Batch, metrics: dict, bar, next_seq: int, running=(), buffer=()) -> None:
        """Ledger, report, and a periodic checkpoint when due; call with the learner idle and the library
        tagged (a consistent point)."""
        self.record_trained(batch.iteration, batch.seqs, batch.episodes)
        if bar is not None:
            bar.update(1)
        self.report(batch.iteration, metrics, metrics["time/iteration_s"], bar)
        if self.due(batch.iteration):
            last = batch.iteration == self.cfg.algorithm.iterations
            self.checkpoint(batch.iteration, next_seq, running, buffer, reason="final" if last else "periodic")

    def record_trained(self, iteration: int, seqs: list[int], episodes: list[Episode]) -> None:
        """Append the batch to the consumed ledger; an episode id trained twice is a bug, never data."""
        ids = [e.episode_id for e in episodes]
        again = sorted(self.consumed.intersection(ids))
        if again or len(set(ids)) != len(ids):
            raise RuntimeError(f"iteration {iteration}: episodes trained before: {again[:5] or ids}")
        self.consumed.update(ids)
        self.trained_groups.extend(seqs)
        with (self.run_dir / "trained.jsonl").open("a") as f:
            f.write(json.dumps({"iteration": iteration, "groups": list(seqs), "episodes": ids}) + "\n")

    def report(self, it: int, metrics: dict, step_s: float, bar) -> None:
        self.logger.log(metrics, step=it, skills=self.library.all_skills() if self.logger.run is not None else None)
        if bar is not None:
            bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", success=f"{metrics['rollout/success']:.2f}",
                            library=int(metrics["library/size"]), step_s=f"{step_s:.1f}")
        tqdm.write(f"iter {it}: reward {metrics['rollout/reward']:.3f}  success {metrics['rollout/success']:.3f}  "
                   f"valid actions {metrics.get('act/valid_rate', 0):.2f}  library {int(metrics['library/size'])}  "
                   f"step {step_s:.1f}s")

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

    # --- held-out evaluation -------------------------------------------------------------------------------------
    def eval_request(self, policy_version: int) -> RolloutRequest:
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
