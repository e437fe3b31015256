"""Train samples → padded micro-batches bounded by a token budget (dynamic batching)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skill1.types import TrainSample


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [N] batch row of each generated token
    cols: torch.Tensor  # [N] position whose hidden state predicts that token (its index - 1)
    targets: torch.Tensor  # [N] the generated tokens
    old_logprobs: torch.Tensor  # [N] behaviour log-probs
    advantages: torch.Tensor  # [N]
    proximal_logprobs: torch.Tensor | None = None  # [N] learner's own before the update (async), if computed

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def split_by_token_budget(samples: list[TrainSample], budget: int) -> list[list[TrainSample]]:
    """Greedy packing of length-sorted samples so that rows x longest-row <= budget (one sample may exceed)."""
    ordered = sorted(samples, key=lambda s: len(s.input_ids))
    groups: list[list[TrainSample]] = []
    current: list[TrainSample] = []
    for s in ordered:
        width = max(len(s.input_ids), max((len(c.input_ids) for c in current), default=0))
        if current and width * (len(current) + 1) > budget:
            groups.append(current)
            current = []
        current.append(s)
    if current:
        groups.append(current)
    return groups


def collate(samples: list[TrainSample], pad_id: int) -> MicroBatch:
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    rows, cols, targets, old, adv, prox = [], [], [], [], [], []
    with_prox = all(s.proximal_logprobs is not None for s in samples)
    for b, s in enumerate(samples):
        n = len(s.input_ids)
        ids[b, :n] = torch.tensor(s.input_ids)
        mask[b, :n] = 1
        gen = range(s.prompt_len, n)
        if len(s.old_logprobs) != len(gen):
            raise ValueError(f"sample has {len(gen)} generated tokens but {len(s.old_logprobs)} log-probs")
        rows.extend([b] * len(gen))
        cols.extend(t - 1 for t in gen)
        targets.extend(s.input_ids[t] for t in gen)
        old.extend(s.old_logprobs)
        adv.extend([s.advantage] * len(gen))
        if with_prox:
            prox.extend(s.proximal_logprobs)
    return MicroBatch(ids, mask, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                      torch.tensor(targets, dtype=torch.long), torch.tensor(old, dtype=torch.float32),
                      torch.tensor(adv, dtype=torch.float32),
                      torch.tensor(prox, dtype=torch.float32) if with_prox else None)
