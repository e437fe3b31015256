"""The competence probe's arithmetic: valid shares per stage, success, and stuck repeats told from first errors."""

from __future__ import annotations

from skill1.tiny_policy.competence import competence
from skill1.types import Episode, Segment, Stage, Task

TASK = Task(task_id="builtin/pick_and_place/1", env="builtin", family="pick_and_place", description="put a mug",
            payload={"seed": 1})


def episode(acts: list[tuple[str, bool]], success: bool) -> Episode:
    segs = [Segment(Stage.QUERY, [1], [2], [0.0], "<query>q</query>", True)]
    segs += [Segment(Stage.ACT, [1], [2], [0.0], text, ok) for text, ok in acts]
    return Episode("e", "g", TASK, segs, [], None, float(success), success, len(acts),
                   sum(not ok for _, ok in acts))


def test_competence_counts_first_and_repeated_invalid_actions():
    eps = [
        episode([("a", True), ("x", False), ("x", False), ("x", False), ("b", True)], success=True),
        episode([("y", False), ("z", False), ("y", False)], success=False),  # no word-for-word repeat in a row
    ]
    c = competence(eps)
    assert c["act/valid_rate"] == 2 / 8 and c["query/valid_rate"] == 1.0
    assert c["act/invalid_first"] == 4 and c["act/invalid_repeated"] == 2
    assert c["success"] == 0.5 and c["episodes"] == 2
