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
