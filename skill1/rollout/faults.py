"""The rollout worker's fault handling (a mixin of `RolloutWorker`, over its event-loop state).

Sampler faults: a sampler actor that dies is restarted by Ray (`rollout.max_sampler_restarts`); its in-flight
generations go to the other samplers at once (the episodes keep their state: a lost call is simply asked
again), and it rejoins once it holds the current weights again (`set_weights_source`).

Environment faults: a slot whose environment raised, a pool process that died, or a pool call that ran past
its deadline (`step_timeout_s` per operation in it; the pool is then killed and Ray restarts it) re-queue the
affected episodes from the start, up to `max_env_retries` times each; after that the episode comes back with
`env_failed=True` and is left out of training, never scored 0.
"""

from __future__ import annotations

import time
from collections import defaultdict

import ray

from skill1.agent.episode import Reset
from skill1.rollout.live import LiveEpisode, PendingCall
from skill1.types import Episode, RolloutRequest

RESTART_BACKOFF_S = 0.5  # how long a lost pool is left alone while Ray brings it back


class FaultHandling:
    """Sampler loss and rejoin, environment faults, lost and hung pools."""

    def set_weights_source(self, packet_ref: list, learner=None) -> None:
        """Where a restarted sampler gets the current weights: the newest packet (object-store sync, passed
        as `[ref]` so it stays a reference) or the learner's `get_weights` (collective / CUDA IPC sync)."""
        self._weights_ref, self._weights_learner = packet_ref[0], learner

    def _least_loaded_sampler(self, load: dict[int, int]) -> int:
        healthy = [s for s in range(len(self.samplers)) if s not in self._sampler_down] or range(len(self.samplers))
        return min(healthy, key=lambda s: (load[s], s))

    def _sampler_lost(self, s: int, call: PendingCall, why: str) -> None:
        """Re-route the lost call's episodes to live samplers and start bringing `s` back."""
        if s not in self._sampler_down:
            self._sampler_down.add(s)
            self._stats.sampler_restarts += 1
            self._stats.fault_log.append(f"sampler {s} lost: {why}")
            self._rejoin(s)
        load: dict[int, int] = defaultdict(int)
        for ep in self._live.values():
            load[ep.sampler] += 1
        for key, attempt in call.members:
            ep = self._live.get(key)
            if ep is not None and ep.attempt == attempt:
                ep.dispatched = False  # the same request again, elsewhere: the episode's state is intact
                ep.sampler = self._least_loaded_sampler(load)
                load[ep.sampler] += 1
                self._stats.regenerated += 1

    def _rejoin(self, s: int) -> None:
        """Ray queues the call until the actor is back; it answers with the version it then holds."""
        if self._weights_ref is not None:
            ref = self.samplers[s].load_weights.remote(self._weights_ref)
        elif self._weights_learner is not None:
            ref = self.samplers[s].load_weights.remote(self._weights_learner.get_weights.remote())
        else:  # nothing trained yet: a fresh sampler holds the current (initial) weights
            ref = self.samplers[s].version.remote()
        self._inflight[ref] = PendingCall(("rejoin", s), [], float("inf"), time.monotonic())

    def _fault(self, ep: LiveEpisode, why: str) -> None:
        """Drop this attempt; re-queue the episode or give up on it."""
        job = self._jobs[ep.job]
        stats = self._stats
        stats.env_faults += 1
        stats.fault_log.append(f"{job.req.episode_ids[ep.index]} attempt {ep.attempt}: {why}")
        ep.gen.close()
        del self._live[ep.key]
        if ep.attempt < job.req.faults.max_env_retries:
            stats.requeued += 1
            self._start(ep.job, ep.index, ep.attempt + 1)
        else:
            stats.failed_episodes += 1
            job.finished[ep.index] = failed_episode(job.req, ep.index, ep.attempt)
            if job.complete:
                self._done(ep.job)

    def _pool_lost(self, p: int, why: str) -> None:
        """Every episode with an environment, or a call, in pool `p` starts again (bounded retries)."""
        for ref in [r for r, c in self._inflight.items() if c.actor == ("pool", p)]:
            del self._inflight[ref]
        self._backoff[p] = time.monotonic() + RESTART_BACKOFF_S
        for ep in [e for e in self._live.values() if e.pool == p and (e.has_env or e.dispatched)]:
            self._fault(ep, why)

    def _actor_lost(self, call: PendingCall, exc: BaseException) -> None:
        """A call whose actor died, or was unavailable while Ray restarts it."""
        if call.actor[0] == "sampler":
            self._sampler_lost(call.actor[1], call, type(exc).__name__)
            return
        if call.actor[0] == "rejoin":  # still coming back: ask again shortly
            time.sleep(RESTART_BACKOFF_S)
            self._rejoin(call.actor[1])
            return
        p = call.actor[1]
        if p not in self._recovering:  # a new incident: its environments are gone
            self._recovering.add(p)
            self._stats.pool_restarts += 1
            self._pool_lost(p, f"env pool {p} died ({type(exc).__name__})")
            return
        # the same incident, a call that raced the restart: resets go again after a pause
        self._backoff[p] = time.monotonic() + RESTART_BACKOFF_S
        for key, attempt in call.members:
            ep = self._live.get(key)
            if ep is not None and ep.attempt == attempt:
                if isinstance(ep.request, Reset):
                    ep.dispatched = False
                else:
                    self._fault(ep, f"env pool {p} restarting")
        return

    def _kill_hung_pools(self) -> None:
        now = time.monotonic()
        for ref, call in list(self._inflight.items()):
            if call.actor[0] == "pool" and now > call.deadline and ref in self._inflight:
                p = call.actor[1]
                ray.kill(self.pools[p], no_restart=False)  # Ray brings the actor back empty
                self._recovering.add(p)
                self._stats.pool_restarts += 1
                self._pool_lost(p, f"env pool {p} hung (call past its per-operation deadline)")


def failed_episode(req: RolloutRequest, index: int, attempts: int) -> Episode:
    return Episode(episode_id=req.episode_ids[index], group_id=req.group_ids[index], task=req.tasks[index],
                   segments=[], candidates=[], chosen_skill_id=None, outcome=0.0, success=False, num_steps=0,
                   num_invalid_actions=0, library_version=req.library_version or 0,
                   policy_version=req.policy_version, env_failed=True, env_restarts=attempts)
