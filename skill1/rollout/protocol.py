"""What every sampler backend (transformers, vLLM, scripted) is, and the data it takes and returns: the
rollout worker and the sampler actors import this, never a backend.

A sampler turns prompt token ids into completions with the behaviour log-prob of every generated token, and
takes new weights from the learner (`load_weights`, or a transport's own receive methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from skill1.agent.action_grammar import ActionTargets
from skill1.types import Generated, WeightsPacket


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 32


@dataclass(frozen=True)
class GenerationBatch:
    """What a sampler actor returns: outputs plus the weights version that produced all of them (weights
    change only between calls), which stamps every episode for staleness accounting."""

    version: int
    outputs: list[Generated]


class Sampler(Protocol):
    version: int

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
                 constraints: list[ActionTargets | None] | None = None) -> list[Generated]:
        """One completion per prompt. `seeds[i]` makes row i's draws independent of its batch; where
        `constraints[i]` is given, row i is decoded under the acting grammar (`action_grammar`)."""
        ...

    def load_weights(self, packet: WeightsPacket) -> None: ...
