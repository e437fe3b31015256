"""ScriptedSampler: a `Sampler` without a model, for exercising the plumbing (pools, workers, fault handling).

It reads the rendered prompt back, recognises which of the four generations is asked for, and answers
with a well-formed response: the task text as the query, candidate 1, a seeded random admissible action
(a `verb[<...>]` template gets the task text), a fixed skill. One action in INVALID_RATE is inadmissible, so
the invalid-action penalty gives GRPO groups reward variance and the learner a gradient. Log-probs are 0.
Selected with `rollout.backend: scripted`; it learns nothing, so runs with it measure throughput, not learning.
"""

from __future__ import annotations

import random
import re
import time

from skill1.types import Generated, WeightsPacket
from skill1.weights.wire import digest

_ACTIONS = re.compile(r"(?:admissible actions of the current situation are|\nActions): \[(.*)\]\.", re.S)
_TASK = re.compile(r"(?:Your task is to|^Task): (.*)", re.M)
_TEMPLATE = re.compile(r"^(\w+)\[<[^>]*>\]$")


INVALID_RATE = 0.2


class ScriptedSampler:
    def __init__(self, model_path: str, seed: int = 0, latency_s: float = 0.0):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.seed, self.latency_s = seed, latency_s  # latency: a real model's time per call, for plumbing tests
        self.rng = random.Random(seed)
        self.version = 0
        self.weights = None  # the last packet's buffer: never used to generate, kept for `weights_digest`

    def load_weights(self, packet: WeightsPacket) -> None:
        self.weights = packet.flat
        self.version = packet.version

    def weights_digest(self) -> str | None:
        """sha256 of the weights it was last handed (None before any): it generates without them, but a sync
        that did not reach it shows here as it would with a model."""
        return None if self.weights is None else digest(self.weights)

    def generate(self, prompts: list[list[int]], params, seeds: list[int] | None = None,
                 constraints=None) -> list[Generated]:
        """Scripted answers; a constrained row never gets the deliberate invalid action."""
        if self.latency_s:
            time.sleep(self.latency_s)
        out = []
        for i, p in enumerate(prompts):
            # a per-request seed makes the answer independent of batching and call order
            rng = random.Random(self.seed * 1_000_003 + seeds[i]) if seeds is not None else self.rng
            constrained = constraints is not None and constraints[i] is not None
            text = self._answer(self.tokenizer.decode(p, skip_special_tokens=True), rng, constrained)
            ids = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_new_tokens]
            out.append(Generated(ids, [0.0] * len(ids), self.tokenizer.decode(ids)))
        return out

    def _answer(self, prompt: str, rng: random.Random, constrained: bool = False) -> str:
        task_match = _TASK.search(prompt)
        task = task_match.group(1).strip() if task_match else "the task"
        if "<query>" in prompt:
            return f"<query>{task}</query>"
        if "<choice>" in prompt:
            return "<choice>1</choice>"
        found = _ACTIONS.search(prompt)
        if found:
            actions = re.findall(r"'(.*?)'(?:, |$)", found.group(1))
            if rng.random() < INVALID_RATE and not constrained:
                return "<think>scripted</think><action>dance on the ceiling</action>"
            action = rng.choice(actions) if actions else "look"
            template = _TEMPLATE.match(action)
            if template:
                action = f"{template.group(1)}[{task}]"
            return f"<think>scripted</think><action>{action}</action>"
        return "<scenario>a scripted scenario</scenario><strategy>a scripted strategy</strategy>"
