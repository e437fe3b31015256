"""Admission control and batch formation of the asynchronous loop: pure, no Ray."""

import random

import pytest

from skill1.algo.admission import AdmissionController, behaviour_version, staleness, take_batch
from skill1.types import RolloutGroup


def test_capacity_is_eta_plus_version_plus_one_batches():
    ctl = AdmissionController(max_staleness=2, groups_per_batch=4)
    assert [ctl.capacity(v) for v in range(3)] == [12, 16, 20]
    for _ in range(12):
        ctl.on_submit(0)
    assert not ctl.can_submit(0) and ctl.can_submit(1) and ctl.free_slots(1) == 4
    with pytest.raises(RuntimeError, match="admission refused"):
        ctl.on_submit(0)


def test_eta_zero_admits_exactly_one_batch_per_version():
    ctl, B = AdmissionController(0, 3), 3
    for v in range(4):
        started = 0
        while ctl.can_submit(v):
            ctl.on_submit(v)
            started += 1
        assert started == B  # the synchronous schedule: B groups, then nothing until v + 1
        for _ in range(B):
            assert ctl.on_finish(learner_version=v, behaviour_version=v)


def test_stale_groups_are_dropped_counted_and_replaced():
    ctl = AdmissionController(1, 2)
    for _ in range(4):
        ctl.on_submit(0)
    assert ctl.on_finish(learner_version=1, behaviour_version=0)  # staleness 1 <= eta
    assert not ctl.on_finish(learner_version=2, behaviour_version=0)  # staleness 2 > eta: dropped
    assert (ctl.accepted, ctl.dropped, ctl.running) == (1, 1, 2)
    assert ctl.free_slots(0) == 1  # the dropped group's place is free again
    assert staleness(5, 3) == 2


def test_random_schedules_never_exceed_capacity_and_keep_the_counter_invariant():
    rng = random.Random(0)
    for eta in (0, 1, 3):
        ctl, B, v = AdmissionController(eta, 4), 4, 0
        running: list[int] = []  # behaviour versions of running groups
        buffered: list[int] = []
        for _ in range(3000):
            event = rng.random()
            if event < 0.4 and ctl.can_submit(v):
                ctl.on_submit(v)
                running.append(v)
            elif event < 0.8 and running:
                b = running.pop(rng.randrange(len(running)))
                if ctl.on_finish(v, b):
                    buffered.append(b)
            elif len(buffered) >= B:  # an update: B groups trained, version advances
                buffered = buffered[B:]
                v += 1
            assert ctl.accepted + ctl.running <= ctl.capacity(v)
            assert ctl.submitted == ctl.accepted + ctl.dropped + ctl.running
        assert v > 10 and ctl.submitted > 100


def _g(seq, version):
    return RolloutGroup(seq, [], version)


def test_take_batch_takes_the_oldest_fresh_groups_and_expires_stale_ones():
    ctl = AdmissionController(1, 2)
    for _ in range(5):
        ctl.on_submit(2)
    for _ in range(5):
        ctl.on_finish(2, 2)
    buffer = [_g(4, 3), _g(1, 1), _g(0, 0), _g(3, 2), _g(2, 2)]
    batch, rest, expired = take_batch(buffer, learner_version=2, ctl=ctl)
    assert [g.seq for g in batch] == [1, 2] and [g.seq for g in rest] == [3, 4] and expired == 1
    assert (ctl.accepted, ctl.dropped) == (4, 1)
    batch, rest, expired = take_batch([_g(7, 2)], learner_version=2, ctl=ctl)
    assert batch == [] and [g.seq for g in rest] == [7] and expired == 0  # fewer than B: wait


def test_the_behaviour_version_of_a_group_is_its_oldest_episodes():
    """Episodes of one group can straddle a weight sync; the group's behaviour version is the oldest, so a
    group with one episode beyond eta is dropped, not admitted as fresh."""
    from types import SimpleNamespace

    episodes = [SimpleNamespace(policy_version=v) for v in (5, 3, 4)]
    assert behaviour_version(episodes) == 3
    ctl = AdmissionController(1, 1)
    ctl.on_submit(3)
    # learner at 5: 5 - 3 = 2 > eta, dropped; stamped with the newest (5) it would have been trained
    assert not ctl.on_finish(learner_version=5, behaviour_version=behaviour_version(episodes))
