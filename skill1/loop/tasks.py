"""Which task each rollout group plays, by group number (`seq`): a run's tasks and episode ids do not
depend on the schedule that played them."""

from __future__ import annotations

from skill1.config import Skill1Config

B_SEED = 1_000_003


class TaskPlan:
    """Groups b*B .. b*B+B-1 play the B tasks of batch b+1, drawn with the iteration seed the synchronous
    loop has always used."""

    def __init__(self, cfg: Skill1Config, task_source):
        self.cfg, self.source, self._batches = cfg, task_source, {}

    def task(self, seq: int):
        algo = self.cfg.algorithm
        batch = seq // algo.tasks_per_iteration + 1
        if batch not in self._batches:
            self._batches = {batch: self.source.sample("train", algo.tasks_per_iteration,
                                                       seed=algo.seed * B_SEED + batch)}
        return self._batches[batch][seq % algo.tasks_per_iteration]

    def group(self, seq: int) -> tuple[list, list[str], list[str]]:
        """(tasks, group ids, episode ids) of group `seq`: G copies of one task."""
        task, g = self.task(seq), self.cfg.algorithm.group_size
        return [task] * g, [f"{seq}:{task.task_id}"] * g, [f"g{seq}-{j}" for j in range(g)]

    def groups(self, seqs) -> tuple[list, list[str], list[str]]:
        """Several groups concatenated in order, as one request plays them."""
        tasks, groups, ids = [], [], []
        for seq in seqs:
            t, g, i = self.group(seq)
            tasks += t
            groups += g
            ids += i
        return tasks, groups, ids


def iteration_groups(cfg: Skill1Config, iteration: int) -> range:
    """The group numbers a synchronous iteration (1-based) plays."""
    b = cfg.algorithm.tasks_per_iteration
    return range((iteration - 1) * b, iteration * b)


def make_batch(cfg: Skill1Config, iteration: int, task_source) -> tuple[list, list[str], list[str]]:
    """The B groups of one synchronous iteration, concatenated in group order."""
    return TaskPlan(cfg, task_source).groups(iteration_groups(cfg, iteration))
