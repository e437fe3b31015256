"""Token-level PPO-clip with KL to a frozen reference. Pure torch functions over [B, T] tensors.

    ratio_t  = exp(logp_t - prox_t)                    prox = policy that produced the data's proximal
    w_t      = min(exp(prox_t - behav_t), is_cap)       truncated IS against the behaviour policy (async)
    pg_t     = -w_t * min(ratio_t A_t, clip(ratio_t, 1-eps, 1+eps) A_t)
    kl_t     = exp(ref_t - logp_t) - (ref_t - logp_t) - 1    (k3, low variance, >= 0)
    loss     = sum_t mask_t (pg_t + beta kl_t) / num_tokens           token-mean over the mini-batch
    (with N data-parallel ranks the learner passes num_tokens = all ranks' tokens / N: DeepSpeed then averages
     the ranks' gradients into the token mean of the whole mini-batch)

Synchronous on-policy training has prox = behav, so w = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, already divided by num_tokens
    pg_loss: float
    kl: float
    clip_frac: float
    is_weight_mean: float  # after truncation
    is_weight_max: float  # before truncation: how far off-policy the worst token was
    is_truncated_frac: float  # tokens whose weight hit is_cap


def ppo_clip_loss(
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    proximal_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.01,
    is_cap: float = 2.0,
    num_tokens: float | None = None,
) -> LossOutput:
    """`num_tokens` is the token count of the whole mini-batch when this is one micro-batch of it."""
    mask = mask.to(logp.dtype)
    denom = float(num_tokens) if num_tokens is not None else float(mask.sum().clamp(min=1.0))
    prox = behaviour_logp if proximal_logp is None else proximal_logp
    ratio = torch.exp(logp - prox)
    raw_w = torch.exp(prox - behaviour_logp).detach()
    is_w = raw_w.clamp(max=is_cap)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    pg = -is_w * torch.minimum(unclipped, clipped)
    per_token = pg
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef > 0:
        kl = kl_k3(logp, ref_logp)
        per_token = pg + kl_coef * kl
    loss = (per_token * mask).sum() / denom
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        clip_frac = (((ratio - 1.0).abs() > clip_eps).to(mask.dtype) * mask).sum() / n
        return LossOutput(
            loss=loss,
            pg_loss=float((pg * mask).sum() / n),
            kl=float((kl * mask).sum() / n),
            clip_frac=float(clip_frac),
            is_weight_mean=float((is_w * mask).sum() / n),
            is_weight_max=float((raw_w * mask).max()) if mask.numel() else 0.0,
            is_truncated_frac=float(((raw_w > is_cap).to(mask.dtype) * mask).sum() / n),
        )


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under softmax(logits / T), the distribution the sampler drew from."""
    logits = logits.float() / temperature
    # gather - logsumexp: no second [N, vocab] tensor (the vocabulary is 152k wide)
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
