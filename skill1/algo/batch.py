"""Episodes + credits → train samples: each generated segment becomes one sample, its stage's advantage
broadcast to its generated tokens; prompts, observations and skill text are context (loss mask 0)."""

from __future__ import annotations

from collections.abc import Sequence

from skill1.algo.advantages import CreditInputs, EpisodeCredit
from skill1.types import Episode, TrainSample


def credit_inputs(ep: Episode, invalid_action_penalty: float) -> CreditInputs:
    chosen = next((c.utility for c in ep.candidates if c.skill_id == ep.chosen_skill_id), None)
    return CreditInputs(
        group_id=ep.group_id,
        reward=ep.outcome - invalid_action_penalty * ep.num_invalid_actions,
        outcome=ep.outcome,
        candidate_utilities=tuple(c.utility for c in ep.candidates),
        chosen_utility=chosen,
    )


def episodes_to_samples(episodes: Sequence[Episode], credits: Sequence[EpisodeCredit]) -> list[TrainSample]:
    samples = []
    for ep, credit in zip(episodes, credits, strict=True):
        for seg in ep.segments:
            if not seg.response_ids:
                continue
            samples.append(TrainSample(
                input_ids=seg.prompt_ids + seg.response_ids,
                prompt_len=len(seg.prompt_ids),
                old_logprobs=list(seg.logprobs),
                advantage=credit.for_stage(seg.stage),
                stage=seg.stage,
                policy_version=ep.policy_version,
            ))
    return samples
