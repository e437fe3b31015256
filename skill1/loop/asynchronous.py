"""The asynchronous schedule (`rollout.mode: async`): rollouts stream while the learner trains, staleness bounded.

One `ray.wait` over every call in flight; between events the driver
  admits  new groups while  accepted + running < (eta + v + 1) * B  (v: the version every sampler holds;
          `AdmissionController`) and at most (L + 1) * B groups wait for a batch (L =
          `rollout.max_library_staleness`, `library_fresh`), each pinned to the newest library tag. Without
          the library bound every group of the first eta+1 batches would read the empty library of the start.
  forms   a batch of the B oldest groups within eta of the learner once it is idle: `steps.learn` (not waited
          on), then the library write and tag iter-k, which overlap the update.
and reacts to
  rollouts   finished groups: into the buffer, or dropped when staler than eta
  update     the learner finished batch k: its weights go to every sampler (held back while a held-out
             evaluation runs, so that every evaluation episode sees one policy)
  synced     every sampler holds version k+1: the version advances, the iteration finishes (ledger, report,
             checkpoint), a held-out evaluation starts when due.

With eta = 0 the events can only happen in the synchronous order and the run equals `run_sync` exactly
(tests/test_async.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import fields
from pathlib import Path

import ray

from skill1.algo.admission import AdmissionController, behaviour_version, library_fresh, staleness_metrics, take_batch
from skill1.checkpoint import checkpoints_dir
from skill1.loop.context import TrainContext
from skill1.loop.steps import (Batch, WeightPush, busy_fractions, finish_push, learn, push_weights, timing_metrics,
                               update_library)
from skill1.metrics import fault_metrics
from skill1.types import RolloutGroup, RolloutStats

POLL_WAIT_S = 0.5  # a poll returns at once when a group is done; this only bounds an idle wait
EVAL_TAG = "eval"  # a held-out evaluation streams beside the training groups


def _stats_delta(new: RolloutStats, old: RolloutStats) -> RolloutStats:
    return RolloutStats(**{f.name: getattr(new, f.name) - getattr(old, f.name)
                           for f in fields(RolloutStats) if f.name != "fault_log"})


class AsyncSchedule:
    def __init__(self, ctx: TrainContext):
        self.ctx, self.cfg, self.fleet = ctx, ctx.cfg, ctx.fleet
        algo = self.cfg.algorithm.effective()
        self.B, self.eta, self.iterations = algo.tasks_per_iteration, self.cfg.rollout.max_staleness, algo.iterations
        start = ctx.start_iteration
        # the groups trained before a resume were submitted and accepted: capacity counts them
        self.ctl = AdmissionController(self.eta, self.B, submitted=start * self.B, accepted=start * self.B)
        self.sampler_version = self.learner_version = start  # the policy on every sampler / the learner's newest
        self.next_seq, self.formed, self.logged = 0, start, start
        self.buffer: list[RolloutGroup] = []
        self.running: set[int] = set()  # group numbers submitted and not back yet
        self.read_tag: dict[int, int] = {}  # group number -> the library tag iteration it was pinned to
        self.replay: list[int] = []  # groups that were running at the checkpoint: played again first
        if ctx.resumed is not None:
            self.next_seq, self.replay = ctx.resumed.state.next_seq, list(ctx.resumed.state.running_seqs)
            for g in ctx.resumed.buffer:  # finished before the checkpoint, not trained: not lost, not re-run
                self.ctl.on_submit(self.sampler_version)
                if self.ctl.on_finish(self.learner_version, g.behaviour_version):
                    self.buffer.append(g)
        self.library_version = ctx.pinned_library()
        self.poll_ref = None
        self.update_refs: list = []  # one per learner rank, rank 0 first
        self.push: WeightPush | None = None  # a weight sync in flight
        self.push_held = False  # new weights wait while a held-out evaluation runs
        self.training: Batch | None = None  # the batch the learner trains now
        self.batch_metrics: dict = {}  # its metrics so far
        self.library_s = 0.0  # its library write
        self.evaluating: int | None = None  # the iteration a held-out evaluation in flight follows
        self.last_eval: dict = {}  # the newest held-out report
        self.counters = {"dropped_on_finish": 0, "expired_in_buffer": 0}
        self.headroom_min, self.restarts_seen = float("inf"), 0
        self.last_stats, self.last_busy, self.stats, self.busy = RolloutStats(), {}, RolloutStats(), {}
        self.last_end, self.t_push, self.metrics = time.perf_counter(), 0.0, {}
        self.bar = None  # the progress bar `run` reports to

    def step(self) -> dict | None:
        """Drive the events until one more iteration has finished (its metrics); None when a stop came first
        (then checkpointed at the last finished iteration)."""
        ctx, target = self.ctx, self.logged + 1
        while self.logged < target:
            if ctx.stop and self._learner_idle():
                # SIGTERM with the learner idle: a consistent point. What runs now is played again on resume.
                ctx.stop_now(self.logged, self.next_seq, self.running.union(self.replay), self.buffer)
                return None
            self._turn(form=not ctx.stop)
        return self.metrics

    def _turn(self, form: bool) -> None:
        """One turn of the event loop: admit, form a batch if the learner is idle (and `form`), wait, react."""
        self._admit()
        if form and self._learner_idle():
            self._form_batch()
        ready = self._wait()
        if self.poll_ref in ready:
            self._on_rollouts(ray.get(self.poll_ref))
        if self.update_refs and all(ref in ready for ref in self.update_refs):
            self._on_update()
        if self.push_held and self.evaluating is None:
            self.push_held, self.push = False, push_weights(self.fleet, self.learner_version)
        if self.push is not None and all(ref in ready for ref in self.push.refs):
            self._on_synced()

    def evaluate(self) -> dict:
        """A held-out evaluation now, streamed beside the running groups (no batch forms meanwhile, so the
        learner stays idle for a checkpoint after it); its report."""
        self.evaluating = self.logged
        self.fleet.worker.submit.remote([dataclasses.replace(self.ctx.eval_request(self.sampler_version),
                                                             tag=EVAL_TAG)])
        while self.evaluating is not None:
            self._turn(form=False)
        return self.last_eval

    def save(self) -> Path:
        """A checkpoint of the last finished iteration (call between steps: the learner is idle)."""
        ctx = self.ctx
        if ctx.saved_iteration != self.logged:
            ctx.checkpoint(self.logged, self.next_seq, self.running.union(self.replay), self.buffer,
                           reason="on request")
        return checkpoints_dir(ctx.run_dir) / f"iter-{self.logged}"

    def run(self, bar) -> dict:
        self.bar = bar
        while self.logged < self.iterations:
            if self.step() is None:
                break
        else:
            if self.ctx.stop:
                self.ctx.stop_now(self.logged, self.next_seq, self.running.union(self.replay), self.buffer)
        self.close()
        return self.metrics

    def close(self) -> None:
        """Stop streaming: before anything else runs on the worker (a final evaluation)."""
        ray.get(self.fleet.worker.stop.remote())

    def _learner_idle(self) -> bool:
        return not self.update_refs and self.push is None and not self.push_held

    def _admit(self) -> None:
        """As many groups as capacity and library freshness allow, all pinned to the newest library tag."""
        ctl, requests, needed = self.ctl, [], self.iterations * self.B  # never admit more than the run trains
        while not self.ctx.stop and ctl.can_submit(self.sampler_version) and ctl.accepted + ctl.running < needed:
            if not library_fresh(len(self.buffer) + len(self.running), self.B, self.cfg.rollout.max_library_staleness):
                break
            if self.replay:
                seq = self.replay.pop(0)
            else:
                seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.read_tag[seq] = self.formed
            requests.append(self.ctx.rollout_request([seq], self.library_version, self.sampler_version, tag=str(seq)))
            ctl.on_submit(self.sampler_version)
            self.running.add(seq)
        if requests:
            self.fleet.worker.submit.remote(requests)
        self.headroom_min = min(self.headroom_min, ctl.capacity(self.sampler_version) - ctl.accepted - ctl.running)

    def _form_batch(self) -> None:
        """The B oldest groups still within eta of the weights that will train them; the library write
        overlaps their update."""
        groups, self.buffer, expired = take_batch(self.buffer, self.learner_version, self.ctl)
        self.counters["expired_in_buffer"] += expired
        if not groups:
            return
        self.formed += 1
        batch = Batch(self.formed, [g.seq for g in groups], [e for g in groups for e in g.episodes],
                      learner_version=self.learner_version)
        self.update_refs, batch_metrics = learn(self.fleet, batch, self.cfg, self.eta)
        t0 = time.perf_counter()
        batch_metrics.update(update_library(self.ctx.library, self.ctx.encoder, batch.episodes, batch.iteration,
                                            self.cfg))
        self.library_s = time.perf_counter() - t0
        batch_metrics.update(staleness_metrics(groups, self.learner_version, self.eta, batch.iteration))
        self.training, self.batch_metrics = batch, batch_metrics
        self.library_version = self.ctx.pinned_library()

    def _wait(self) -> set:
        if self.poll_ref is None:
            self.poll_ref = self.fleet.worker.poll.remote(POLL_WAIT_S)
        waiting = [self.poll_ref, *self.update_refs, *(self.push.refs if self.push else [])]
        ray.wait(waiting, num_returns=1)
        return set(ray.wait(waiting, num_returns=len(waiting), timeout=0)[0])

    def _on_rollouts(self, progress) -> None:
        self.poll_ref, self.stats, self.busy = None, progress.stats, progress.busy_s
        for tag, episodes in progress.completed:
            if tag == EVAL_TAG:
                self.last_eval = self.ctx.held_out(self.evaluating, episodes)
                self.evaluating = None
                continue
            seq = int(tag)
            self.running.discard(seq)
            behaviour = behaviour_version(episodes)
            if self.ctl.on_finish(self.learner_version, behaviour):
                self.buffer.append(RolloutGroup(seq, episodes, behaviour, self.read_tag.pop(seq, self.formed)))
            else:
                self.counters["dropped_on_finish"] += 1

    def _on_update(self) -> None:
        self.batch_metrics.update(ray.get(self.update_refs)[0])
        self.update_refs = []
        self.learner_version += 1
        self.t_push = time.perf_counter()
        self.fleet.heal(self.stats.sampler_restarts > self.restarts_seen)
        self.restarts_seen = self.stats.sampler_restarts
        self.push_held = True

    def _on_synced(self) -> None:
        self.sampler_version, self.push = finish_push(self.push), None
        end, batch, m, ctl = time.perf_counter(), self.training, self.batch_metrics, self.ctl
        m.update({**fault_metrics(batch.all_episodes, _stats_delta(self.stats, self.last_stats)),
                  **busy_fractions(self.last_busy, self.busy, end - self.last_end),
                  **timing_metrics(batch, end - self.last_end, m.get("learner/update_s", 0.0), end - self.t_push,
                                   self.library_s),
                  "policy/version": float(self.sampler_version),
                  "async/submitted": float(ctl.submitted), "async/accepted": float(ctl.accepted),
                  "async/dropped": float(ctl.dropped), "async/running": float(ctl.running),
                  "async/capacity": float(ctl.capacity(self.sampler_version)), "async/buffered": float(len(self.buffer)),
                  "async/capacity_headroom_min": float(self.headroom_min),
                  **{f"async/{k}": float(v) for k, v in self.counters.items()}})
        self.last_end, self.last_stats, self.last_busy, self.metrics = end, self.stats, self.busy, m
        self.logged += 1
        self.training = None
        self.ctx.finish_iteration(batch, m, self.bar, self.next_seq, self.running.union(self.replay), self.buffer)
        if self.ctx.eval_due(self.logged):
            self.evaluating = self.logged
            self.fleet.worker.submit.remote([dataclasses.replace(self.ctx.eval_request(self.sampler_version), tag=EVAL_TAG)])


def run_async(ctx: TrainContext, bar) -> dict:
    return AsyncSchedule(ctx).run(bar)
