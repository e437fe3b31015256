"""The synchronous schedule (`rollout.mode: sync`), the reference algorithm. Iteration k:

    rollout   B tasks x G episodes at policy version k-1 and library tag iter-(k-1)     (worker, samplers, pools)
    learn     credit → one update                                                       (steps.learn)
    sync      the new weights on every sampler                                          (steps.sync_weights)
    library   utilities, new skills, eviction, tag iter-k                               (steps.update_library)
    finish    ledger, report, checkpoint; a held-out evaluation when due
"""

from __future__ import annotations

import time
from pathlib import Path

import ray

from skill1.checkpoint import checkpoints_dir
from skill1.loop.context import TrainContext
from skill1.loop.steps import Batch, busy_fractions, learn, sync_weights, timing_metrics, update_library
from skill1.loop.tasks import iteration_groups
from skill1.metrics import fault_metrics


def _wait_or_stop(ref, stop) -> bool:
    """Wait for `ref`; False if a stop was requested first (the call is abandoned)."""
    while not ray.wait([ref], timeout=1.0)[0]:
        if stop:
            return False
    return True


class SyncSchedule:
    """One iteration per `step`, each the steps one after another."""

    def __init__(self, ctx: TrainContext):
        self.ctx, self.policy_version, self.busy, self.last_end = ctx, ctx.start_iteration, {}, time.perf_counter()
        self.bar = None  # the progress bar `run` reports to
        self.done = ctx.start_iteration  # the last finished iteration

    def step(self, it: int) -> dict | None:
        """Iteration `it` from rollout to its report and checkpoint; None when a stop came first (iteration
        it-1, where nothing has changed since, is then checkpointed)."""
        ctx, cfg, fleet = self.ctx, self.ctx.cfg, self.ctx.fleet
        t0 = time.perf_counter()
        seqs = list(iteration_groups(cfg, it))
        run = fleet.worker.run.remote(ctx.rollout_request(seqs, ctx.pinned_library(), self.policy_version))
        if ctx.stop or not _wait_or_stop(run, ctx.stop):
            ctx.stop_now(it - 1, seqs[0])
            return None
        batch = Batch(it, seqs, ray.get(run), learner_version=self.policy_version)
        stats, busy = ray.get([fleet.worker.stats.remote(), fleet.worker.busy.remote()])
        t1 = time.perf_counter()
        fleet.sleep_samplers()  # colocated vLLM: its weights and KV cache leave the GPU the learner now uses
        refs, metrics = learn(fleet, batch, cfg, eta=0)
        metrics.update(ray.get(refs)[0])
        fleet.wake_samplers()
        fleet.heal(stats.sampler_restarts > 0)
        t2 = time.perf_counter()
        self.policy_version = sync_weights(fleet, int(metrics["learner/version"]))
        t3 = time.perf_counter()
        metrics.update(update_library(ctx.library, ctx.encoder, batch.episodes, it, cfg))
        end = time.perf_counter()
        metrics.update({**fault_metrics(batch.all_episodes, stats), **busy_fractions(self.busy, busy, end - t0),
                        **timing_metrics(batch, end - self.last_end, metrics.get("learner/update_s", t2 - t1),
                                         t3 - t2, end - t3),
                        "policy/version": float(self.policy_version), "time/rollout_s": t1 - t0})
        self.busy, self.last_end = busy, end
        ctx.finish_iteration(batch, metrics, self.bar, next_seq=seqs[-1] + 1)
        self.done = it
        if ctx.eval_due(it):
            ctx.evaluate_now(it, self.policy_version)
        return metrics

    def evaluate(self) -> dict:
        """A held-out evaluation now (the worker is idle between steps); its report."""
        return self.ctx.evaluate_now(self.done, self.policy_version)

    def save(self) -> Path:
        """A checkpoint of the last finished iteration (between steps: the learner is idle)."""
        ctx = self.ctx
        if ctx.saved_iteration != self.done:
            ctx.checkpoint(self.done, self.done * ctx.cfg.algorithm.tasks_per_iteration, reason="on request")
        return checkpoints_dir(ctx.run_dir) / f"iter-{self.done}"

    def close(self) -> None:
        """Nothing streams between steps."""

    def run(self, bar) -> dict:
        self.bar, metrics, cfg = bar, {}, self.ctx.cfg
        for it in range(self.ctx.start_iteration + 1, cfg.algorithm.iterations + 1):
            step = self.step(it)
            if step is None:
                return metrics
            metrics = step
        if self.ctx.stop:
            self.ctx.stop_now(cfg.algorithm.iterations, cfg.algorithm.iterations * cfg.algorithm.tasks_per_iteration)
        return metrics


def run_sync(ctx: TrainContext, bar) -> dict:
    return SyncSchedule(ctx).run(bar)
