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


class _Policy:
    """A sampler stub: answers every prompt from `answers` (prompt ids -> text), else with `default`."""

    def __init__(self, tokenizer, answers: dict, default: str):
        self.tokenizer, self.answers, self.default = tokenizer, answers, default

    def generate(self, prompts, params, seeds=None, constraints=None):
        from skill1.types import Generated

        return [Generated([], [], self.answers.get(tuple(p), self.default)) for p in prompts]


def test_imitation_is_scored_per_decision_against_the_searchers_own_demos():
    from skill1.envs.builtin import HouseholdTaskSource
    from skill1.models.tokenizer import build_chat_template, build_qwen_tokenizer
    from skill1.tiny_policy.competence import decision_accuracy
    from skill1.tiny_policy.warm_start import decision, demonstrations
    from skill1.types import EpisodeSettings

    tok = build_qwen_tokenizer()
    tok.chat_template = build_chat_template(None)
    settings = EpisodeSettings(use_library=True, enable_query_generation=True, enable_rerank=True,
                               enable_distillation=True, max_steps=8, history_length=1, max_skill_chars=1000,
                               max_new_tokens={s: 64 for s in Stage})
    tasks = HouseholdTaskSource().sample("eval", 12, seed=0)
    demos = [d for d in demonstrations(tasks, tok, settings, 0, with_library=0.0, explore=0.0, mistakes=0.0)
             if d.stage is Stage.ACT]
    truth = {tuple(d.prompt_ids): tok.decode(d.response_ids, skip_special_tokens=True) for d in demos}
    perfect = decision_accuracy(_Policy(tok, truth, "?"), settings, num_tasks=12, batch_size=5)
    assert perfect["imitation/all"] == 1.0 and {"imitation/explore", "imitation/take"} <= set(perfect)
    lazy = decision_accuracy(_Policy(tok, {}, "<think>mug</think><action>explore</action>"), settings,
                             num_tasks=12)
    explore_share = sum(decision(t) == "explore" for t in truth.values()) / len(truth)
    assert lazy["imitation/explore"] == 1.0 and lazy["imitation/take"] == 0.0
    assert abs(lazy["imitation/all"] - explore_share) < 1e-9 and 0 < explore_share < 1
