"""Log-probs of generated tokens: hidden states for every position, vocabulary logits only where needed.

With a 152k vocabulary the LM head dominates a small model's cost; prompts (observations, skill text,
admissible actions) are most of each sequence and need no logits at all.
"""

from __future__ import annotations

import torch

from skill1.algo.losses import gather_logprobs
from skill1.learner.batching import MicroBatch


def response_logprobs(model: torch.nn.Module, mb: MicroBatch, temperature: float = 1.0) -> torch.Tensor:
    device = next(model.parameters()).device
    hidden = model.base_model(input_ids=mb.input_ids.to(device),
                              attention_mask=mb.attention_mask.to(device)).last_hidden_state
    picked = hidden[mb.rows.to(device), mb.cols.to(device)]
    logits = model.get_output_embeddings()(picked)
    return gather_logprobs(logits, mb.targets.to(device), temperature)
