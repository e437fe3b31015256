"""Staleness-bounded admission control for asynchronous rollouts (the AReaL rule, over GRPO groups).

A rollout group may start only while

    accepted + running < (eta + v + 1) * B

eta = max staleness in policy versions, v = the policy version every sampler holds, B = groups per batch.
`accepted` counts finished groups taken for training (buffered or trained); `dropped` counts groups thrown
away (too stale when they finished or when their batch formed). A dropped group frees its capacity, so it
is replaced. Invariant at every moment: submitted == accepted + dropped + running.

With eta = 0 exactly B groups run under version v and none under v+1 starts before v+1 is on every
sampler: the synchronous algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

from skill1.types import Episode, RolloutGroup


def staleness(learner_version: int, behaviour_version: int) -> int:
    """Policy updates between the policy that sampled the data and the one about to learn from it."""
    return learner_version - behaviour_version


@dataclass
class AdmissionController:
    max_staleness: int  # eta
    groups_per_batch: int  # B
    submitted: int = 0
    accepted: int = 0
    dropped: int = 0
    running: int = 0

    def __post_init__(self) -> None:
        if self.max_staleness < 0 or self.groups_per_batch < 1:
            raise ValueError(f"need eta >= 0 and B >= 1, got eta={self.max_staleness}, B={self.groups_per_batch}")

    def capacity(self, version: int) -> int:
        return (self.max_staleness + version + 1) * self.groups_per_batch

    def can_submit(self, version: int) -> bool:
        return self.accepted + self.running < self.capacity(version)

    def free_slots(self, version: int) -> int:
        return max(0, self.capacity(version) - self.accepted - self.running)

    def on_submit(self, version: int) -> None:
        if not self.can_submit(version):
            raise RuntimeError(f"admission refused: accepted {self.accepted} + running {self.running} "
                               f">= capacity {self.capacity(version)} at version {version}")
        self.submitted += 1
        self.running += 1
        self._check()

    def on_finish(self, learner_version: int, behaviour_version: int) -> bool:
        """A running group came back: accept it, or drop it when staler than eta. Returns accepted."""
        if self.running < 1:
            raise RuntimeError("a group finished but none is running")
        self.running -= 1
        fresh = staleness(learner_version, behaviour_version) <= self.max_staleness
        if fresh:
            self.accepted += 1
        else:
            self.dropped += 1
        self._check()
        return fresh

    def on_expired(self) -> None:
        """An accepted group went stale in the buffer before its batch formed: it is dropped instead."""
        if self.accepted < 1:
            raise RuntimeError("no accepted group to expire")
        self.accepted -= 1
        self.dropped += 1
        self._check()

    def is_fresh(self, learner_version: int, behaviour_version: int) -> bool:
        return staleness(learner_version, behaviour_version) <= self.max_staleness

    def _check(self) -> None:
        if self.submitted != self.accepted + self.dropped + self.running or min(
                self.accepted, self.dropped, self.running) < 0:
            raise AssertionError(f"admission counters broken: {self}")


def behaviour_version(episodes: list[Episode]) -> int:
    """A group is as stale as its oldest episode: the oldest weights that generated for any of it."""
    return min(e.policy_version for e in episodes)


def library_fresh(queued: int, groups_per_batch: int, max_library_staleness: int) -> bool:
    """May one more group start now? It reads the newest tag iter-f and, behind the `queued` groups admitted
    and not yet in a batch, is trained in batch f + 1 + queued // B, which synchronously would read
    iter-(f + queued // B): its library staleness is queued // B. Counting queued groups rather than group
    numbers keeps admission going when groups are dropped."""
    return queued // groups_per_batch <= max_library_staleness


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


def staleness_metrics(groups: list[RolloutGroup], learner_version: int, eta: int, iteration: int) -> dict[str, float]:
    """Policy staleness of a batch's groups, and library staleness: the tags between the one a group read
    and iter-{k-1}, what batch k reads when synchronous."""
    values = [staleness(learner_version, g.behaviour_version) for g in groups]
    m = {"async/staleness_mean": sum(values) / max(1, len(values)), "async/staleness_max": float(max(values, default=0))}
    m.update({f"async/staleness/{s}": values.count(s) / max(1, len(values)) for s in range(eta + 1)})
    lib = [iteration - 1 - g.library_iteration for g in groups]
    m.update({"async/library_staleness_mean": sum(lib) / max(1, len(lib)),
              "async/library_staleness_max": float(max(lib, default=0))})
    return m
