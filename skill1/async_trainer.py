"""The asynchronous actor-learner loop: rollouts stream while the learner trains, staleness bounded.

The driver reacts to three kinds of event (one `ray.wait` over all of them):
  poll    finished groups from the streaming rollout worker: accepted into the buffer, or dropped when
          staler than eta (`AdmissionController`)
  update  the learner finished batch k: its weights go to every sampler, one packet, one call each
  sync    every sampler holds version k+1: the version advances and admission opens up to (eta + v + 1) * B
and between events it
  admits  new groups while `accepted + running < (eta + v + 1) * B` and the library is fresh enough:
          at most (L + 1) * B groups wait for a batch (L = `rollout.max_library_staleness`), so a group reads
          a tag at most L behind the one the synchronous loop would give it; each is pinned to the newest
          tag. Without that bound every group of the first eta+1 batches would be admitted against the
          empty library of the start, and none of them would retrieve a skill.
  forms   a batch of the B oldest fresh groups once the learner is idle: credit (pure), `learner.update`
          (not waited on), then the library write and tag iter-k, which overlap the update.

Sampling never waits for the learner except through admission; environment stepping is per trajectory in
the worker. With eta = 0 the events can only happen in the synchronous order (B groups at version v,
nothing more until v+1 is on every sampler), and the run equals `run_sync` exactly.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field, fields

import ray

from skill1.algo.admission import AdmissionController, staleness
from skill1.algo.batch import episodes_to_samples
from skill1.config import recompute_proximal
from skill1.metrics import episode_metrics, fault_metrics
from skill1.rollout.worker import RolloutRequest, RolloutStats
from skill1.rollout.requests import fault_policy
from skill1.trainer import TaskPlan, TrainContext, busy_fractions, compute_credit, update_library
from skill1.types import Episode, RolloutGroup

POLL_WAIT_S = 0.5  # a poll returns at once when a group is done; this only bounds an idle wait
EVAL_TAG = "eval"  # a held-out evaluation streams beside the training groups


@dataclass
class _Batch:
    iteration: int
    groups: list[RolloutGroup]
    learner_version: int  # the weights that train it
    episodes: list[Episode] = field(default_factory=list)  # trainable ones
    all_episodes: list[Episode] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _stats_delta(new: RolloutStats, old: RolloutStats) -> RolloutStats:
    return RolloutStats(**{f.name: getattr(new, f.name) - getattr(old, f.name)
                           for f in fields(RolloutStats) if f.name != "fault_log"})


def staleness_metrics(groups: list[RolloutGroup], learner_version: int, eta: int, iteration: int) -> dict[str, float]:
    values = [staleness(learner_version, g.behaviour_version) for g in groups]
    m = {"async/staleness_mean": sum(values) / max(1, len(values)), "async/staleness_max": float(max(values, default=0))}
    m.update({f"async/staleness/{s}": values.count(s) / max(1, len(values)) for s in range(eta + 1)})
    # library staleness: tags between the one a group read and iter-{k-1}, what batch k reads when synchronous
    lib = [iteration - 1 - g.library_iteration for g in groups]
    m.update({"async/library_staleness_mean": sum(lib) / max(1, len(lib)),
              "async/library_staleness_max": float(max(lib, default=0))})
    return m


def library_fresh(queued: int, groups_per_batch: int, max_library_staleness: int) -> bool:
    """May one more group start now? It reads the newest tag iter-f and, behind the `queued` groups admitted
    and not yet in a batch, is trained in batch f + 1 + queued // B, which synchronously would read
    iter-(f + queued // B): its library staleness is queued // B. Counting queued groups rather than group
    numbers keeps admission going when groups are dropped."""
    return queued // groups_per_batch <= max_library_staleness


def behaviour_version(episodes: list[Episode]) -> int:
    """A group is as stale as its oldest episode: the oldest weights that generated for any of it."""
    return min(e.policy_version for e in episodes)


def take_batch(buffer: list[RolloutGroup], learner_version: int,
               ctl: AdmissionController) -> tuple[list[RolloutGroup], list[RolloutGroup], int]:
    """(the B oldest groups within eta of `learner_version` or [] if fewer are fresh, the rest, how many
    expired). Expired groups leave the buffer and are counted as dropped by `ctl`."""
    fresh, expired = [], 0
    for g in sorted(buffer, key=lambda g: g.seq):
        if ctl.is_fresh(learner_version, g.behaviour_version):
            fresh.append(g)
        else:
            ctl.on_expired()
            expired += 1
    b = ctl.groups_per_batch
    return (fresh[:b], fresh[b:], expired) if len(fresh) >= b else ([], fresh, expired)


def run_async(ctx: TrainContext, bar) -> dict:
    cfg, fleet = ctx.cfg, ctx.fleet
    a, r = cfg.algorithm.effective(), cfg.rollout
    B, eta = a.tasks_per_iteration, r.max_staleness
    start = ctx.start_iteration
    # the groups trained before a resume were submitted and accepted: capacity counts them
    plan, ctl = TaskPlan(cfg, ctx.task_source), AdmissionController(eta, B, submitted=start * B, accepted=start * B)
    needed = a.iterations * B  # never admit more than the run can train
    version = learner_version = start  # on every sampler / finished by the learner
    next_seq, formed, logged = 0, start, start
    buffer: list[RolloutGroup] = []
    running: set[int] = set()  # group numbers submitted and not back yet
    read_tag: dict[int, int] = {}  # group number -> the library tag iteration it was pinned to
    replay: list[int] = []  # groups that were running at the checkpoint: played again first
    if ctx.resumed is not None:
        next_seq, replay = ctx.resumed.state.next_seq, list(ctx.resumed.state.running_seqs)
        for g in ctx.resumed.buffer:  # finished before the checkpoint, not trained: not lost, not re-run
            ctl.on_submit(version)
            if ctl.on_finish(learner_version, g.behaviour_version):
                buffer.append(g)
    pinned = ctx.pinned_library()
    poll_ref = None
    update_refs: list = []  # one per learner rank, rank 0 first
    sync_refs: list = []
    training: _Batch | None = None
    counters = {"dropped_on_finish": 0, "expired_in_buffer": 0}
    headroom_min, restarts_seen = float("inf"), 0
    last_stats, last_busy, stats, busy = RolloutStats(), {}, RolloutStats(), {}
    last_log, metrics, t_sync = time.perf_counter(), {}, 0.0
    evaluating: int | None = None  # the iteration a held-out evaluation in flight follows
    push_held = False  # new weights wait while it runs: every eval episode sees one policy version

    while logged < a.iterations:
        if ctx.stop and not update_refs and not sync_refs and not push_held:
            # SIGTERM with the learner idle: a consistent point. What runs now is played again on resume.
            ctx.stop_now(logged, next_seq, running.union(replay), buffer)
            break
        # admit: as many groups as capacity and library freshness allow, all pinned to the newest library tag
        requests = []
        while not ctx.stop and ctl.can_submit(version) and ctl.accepted + ctl.running < needed:
            if not library_fresh(len(buffer) + len(running), B, r.max_library_staleness):
                break
            if replay:
                seq = replay.pop(0)
            else:
                seq, next_seq = next_seq, next_seq + 1
            read_tag[seq] = formed
            tasks, groups, ids = plan.group(seq)
            requests.append(RolloutRequest(tasks, groups, ids, ctx.settings, ctx.retrieval, r.temperature, r.top_p,
                                           pinned, version, fault_policy(cfg), tag=str(seq)))
            ctl.on_submit(version)
            running.add(seq)
        if requests:
            fleet.worker.submit.remote(requests)
        headroom_min = min(headroom_min, ctl.capacity(version) - ctl.accepted - ctl.running)

        # form a batch: the B oldest groups still within eta of the weights that will train them
        if not update_refs and not sync_refs and not push_held and not ctx.stop:
            groups, buffer, expired = take_batch(buffer, learner_version, ctl)
            counters["expired_in_buffer"] += expired
            if groups:
                formed += 1
                training = _Batch(formed, groups, learner_version)
                training.all_episodes = [e for g in training.groups for e in g.episodes]
                training.episodes = [e for e in training.all_episodes if not e.env_failed]
                credits = compute_credit(training.episodes, cfg)
                update_refs = fleet.update(episodes_to_samples(training.episodes, credits),
                                           recompute_proximal=recompute_proximal(cfg, eta))
                t0 = time.perf_counter()
                training.metrics = {**episode_metrics(training.episodes, credits),
                                    **update_library(ctx.library, ctx.encoder, training.episodes, formed, cfg),
                                    **staleness_metrics(training.groups, learner_version, eta, formed),
                                    "time/library_s": time.perf_counter() - t0}
                pinned = ctx.pinned_library()

        # wait for the next event
        if poll_ref is None:
            poll_ref = fleet.worker.poll.remote(POLL_WAIT_S)
        waiting = [poll_ref, *update_refs, *sync_refs]
        ray.wait(waiting, num_returns=1)
        ready = set(ray.wait(waiting, num_returns=len(waiting), timeout=0)[0])

        if poll_ref in ready:
            progress = ray.get(poll_ref)
            poll_ref, stats, busy = None, progress.stats, progress.busy_s
            for tag, episodes in progress.completed:
                if tag == EVAL_TAG:
                    ctx.held_out(evaluating, episodes)
                    evaluating = None
                    continue
                running.discard(int(tag))
                behaviour = behaviour_version(episodes)
                if ctl.on_finish(learner_version, behaviour):
                    buffer.append(RolloutGroup(int(tag), episodes, behaviour, read_tag.pop(int(tag), formed)))
                else:
                    counters["dropped_on_finish"] += 1

        if update_refs and all(ref in ready for ref in update_refs):
            training.metrics.update(ray.get(update_refs)[0])
            update_refs = []
            learner_version += 1
            t_sync = time.perf_counter()
            fleet.heal(stats.sampler_restarts > restarts_seen)
            restarts_seen = stats.sampler_restarts
            push_held = True
        if push_held and evaluating is None:
            push_held = False
            acks, others = fleet.push_weights(learner_version)
            sync_refs = [*acks, *others]

        if sync_refs and all(ref in ready for ref in sync_refs):
            versions = ray.get(sync_refs[:len(fleet.samplers)])
            ray.get(sync_refs)
            sync_refs = []
            if set(versions) != {learner_version}:
                raise RuntimeError(f"weights sync: samplers hold {versions}, the learner {learner_version}")
            version = learner_version
            now = time.perf_counter()
            wall = now - last_log
            m = training.metrics
            m.update({**fault_metrics(training.all_episodes, _stats_delta(stats, last_stats)),
                      **busy_fractions(last_busy, busy, wall),
                      "policy/version": float(version), "time/sync_s": now - t_sync, "time/iteration_s": wall,
                      "time/learner_s": m.get("learner/update_s", 0.0),
                      "time/learner_busy": m.get("learner/update_s", 0.0) / wall,
                      "time/episodes_per_s": len(training.episodes) / wall,
                      "async/submitted": float(ctl.submitted), "async/accepted": float(ctl.accepted),
                      "async/dropped": float(ctl.dropped), "async/running": float(ctl.running),
                      "async/capacity": float(ctl.capacity(version)), "async/buffered": float(len(buffer)),
                      "async/capacity_headroom_min": float(headroom_min),
                      **{f"async/{k}": float(v) for k, v in counters.items()}})
            last_log, last_stats, last_busy, metrics = now, stats, busy, m
            logged += 1
            ctx.record_trained(training.iteration, [g.seq for g in training.groups], training.episodes)
            bar.update(1)
            ctx.report(training.iteration, m, wall, bar)
            training = None
            if ctx.due(logged):  # the learner is idle and the library tagged: a consistent point
                ctx.checkpoint(logged, next_seq, running.union(replay), buffer)
            if ctx.eval_due(logged):
                evaluating = logged
                fleet.worker.submit.remote([dataclasses.replace(ctx.eval_request(version), tag=EVAL_TAG)])
    else:
        if ctx.stop:
            ctx.stop_now(logged, next_seq, running.union(replay), buffer)
    ray.get(fleet.worker.stop.remote())  # before anything else runs on the worker (a final evaluation)
    return metrics
