"""GRPO groups: the G rollouts of a group play the same task, and groups never merge."""

from __future__ import annotations

from collections import defaultdict

from skill1.config import load_config
from skill1.loop.tasks import make_batch
from skill1.types import Task


class _RepeatingSource:
    """A split smaller than the batch: the same game comes back twice in one sample."""

    def sample(self, split, n, seed):
        games = [Task(f"g{i}", "x", "Pick", f"game {i}", {"game_file": f"/g{i}"}) for i in range(2)]
        return [games[i % 2] for i in range(n)]


def test_each_group_is_g_rollouts_of_one_task_even_when_tasks_repeat():
    cfg = load_config(None, ["algorithm.tasks_per_iteration=4", "algorithm.group_size=3"])
    tasks, groups, ids = make_batch(cfg, 7, _RepeatingSource())
    assert len(tasks) == len(groups) == len(ids) == 12 and len(set(ids)) == 12
    members = defaultdict(list)
    for t, g in zip(tasks, groups):
        members[g].append(t.task_id)
    assert len(members) == 4  # g0 appears twice in the sample: still two groups of three
    assert all(len(v) == 3 and len(set(v)) == 1 for v in members.values())
