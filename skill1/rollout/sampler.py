"""The transformers sampler backend (CPU, or GPU without vLLM), and `make_sampler`, which picks a backend.

The protocol every backend implements is `skill1.rollout.protocol`; the vLLM backend lives in
`skill1.rollout.vllm`, the only module that imports vLLM.
"""

from __future__ import annotations

import torch

from skill1.agent.action_grammar import ActionGrammar, ActionTargets
from skill1.algo.losses import gather_logprobs
from skill1.models.tiny import load_policy
from skill1.rollout.protocol import Sampler, SamplingParams
from skill1.types import Generated, WeightsPacket
from skill1.weights.wire import digest, flat_weights, load_packet


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
                row_generators: list[torch.Generator] | None = None):
    """Draw one token per row; return (tokens, log-probs under the distribution actually sampled from).

    With `row_generators` each row draws from its own generator (inverse-CDF, one uniform per row), so a
    sequence's tokens do not depend on which other sequences share its batch."""
    logits = logits.float()
    if temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logp.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() >= top_p
        sorted_logp = sorted_logp.masked_fill(outside, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
        logp = torch.log_softmax(logp, dim=-1)
    if row_generators is None:
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    else:
        cdf = logp.exp().cumsum(-1)
        u = torch.stack([torch.rand((), generator=g, device=g.device) for g in row_generators]).to(cdf.device)
        # first index whose cumulative mass exceeds u * total: always a token with positive probability
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
        tokens = tokens.clamp(max=cdf.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class HFSampler:
    """transformers backend: left-padded batches, KV cache, log-probs recorded as tokens are drawn."""

    def __init__(self, model_path: str | None, dtype: str = "float32", device: str = "cpu", seed: int = 0,
                 max_batch_size: int = 64, *, model=None, tokenizer=None):
        if model_path is not None:
            model, tokenizer = load_policy(model_path, dtype=dtype, device=device)
        elif model is None or tokenizer is None:
            raise ValueError("HFSampler needs a model_path, or a model and its tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=self.device)
        self.pad_id = self.tokenizer.pad_token_id
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.version = 0
        self._grammar: ActionGrammar | None = None  # built on the first constrained call

    @classmethod
    def from_model(cls, model, tokenizer, device: str = "cpu", seed: int = 0) -> "HFSampler":
        """A sampler over a model already in memory (it is put in eval mode and frozen: pass a copy)."""
        return cls(None, device=device, seed=seed, model=model, tokenizer=tokenizer)

    def load_weights(self, packet: WeightsPacket) -> None:
        load_packet(self.model, packet)
        self.version = packet.version

    def weights_digest(self) -> str:
        """sha256 of the weights it generates with (equal to `Learner.weights_digest` after a sync)."""
        return digest(flat_weights(self.model))

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
                 constraints: list[ActionTargets | None] | None = None) -> list[Generated]:
        out: list[Generated] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = slice(start, start + self.max_batch_size)
            out.extend(self._generate_batch(prompts[chunk], params, seeds[chunk] if seeds is not None else None,
                                            constraints[chunk] if constraints is not None else None))
        return out

    def _masks(self, texts: list[str], constraints: list[ActionTargets | None], vocab: int,
               tokens_left: int) -> torch.Tensor | None:
        """[batch, vocab] allowed tokens for this step (all allowed in unconstrained rows), or None."""
        if self._grammar is None:
            self._grammar = ActionGrammar.for_tokenizer(self.tokenizer, self.eos_ids.tolist(), vocab)
        rows = [self._grammar.allowed(t, c, tokens_left) if c is not None else None
                for t, c in zip(texts, constraints)]
        if all(r is None for r in rows):
            return None
        return torch.stack([r if r is not None else torch.ones(vocab, dtype=torch.bool) for r in rows]).to(self.device)

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams,
                        seeds: list[int] | None, constraints: list[ActionTargets | None] | None = None
                        ) -> list[Generated]:
        rows = None
        if seeds is not None:
            rows = [torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + s) for s in seeds]
        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # positions count real tokens only, so a left-padded row sees the positions the learner will use
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        next_pos = positions[:, -1:] + 1
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens_out, logps_out = [], []
        constrained = constraints is not None and any(c is not None for c in constraints)
        texts = [""] * batch
        for step in range(params.max_new_tokens):
            logits = out.logits[:, -1]
            allowed = None
            if constrained:
                live = [None if f else c for c, f in zip(constraints, finished.tolist())]
                allowed = self._masks(texts, live, logits.shape[-1], params.max_new_tokens - step)
            if allowed is None:
                tokens, logps = sample_next(logits, params.temperature, params.top_p, self.generator, rows)
            else:
                tokens, logps = sample_next(logits.float().masked_fill(~allowed, float("-inf")),
                                            params.temperature, params.top_p, self.generator, rows)
                # a constrained row records the policy's own log-prob of what was drawn, unmasked: what the
                # learner recomputes (the mask is the environment's, like invalid-action masking in games)
                masked = torch.tensor([c is not None for c in live], device=self.device)
                logps = torch.where(masked, gather_logprobs(logits, tokens, params.temperature or 1.0), logps)
            tokens = tokens.masked_fill(finished, self.pad_id)
            tokens_out.append(tokens)
            logps_out.append(logps.masked_fill(finished, 0.0))
            finished |= torch.isin(tokens, self.eos_ids)
            if constrained:
                texts = [t + self._grammar.pieces[k] for t, k in zip(texts, tokens.tolist())]
            if bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                             cache=out.cache, use_cache=True)
            next_pos = next_pos + 1
        toks = torch.stack(tokens_out, 1).tolist()
        lps = torch.stack(logps_out, 1).tolist()
        eos = set(self.eos_ids.tolist())
        results = []
        for row_toks, row_lps in zip(toks, lps):
            n = next((i + 1 for i, t in enumerate(row_toks) if t in eos), len(row_toks))  # keep the eos
            results.append(Generated(row_toks[:n], row_lps[:n],
                                     self.tokenizer.decode(row_toks[:n], skip_special_tokens=True)))
        return results


def make_sampler(backend: str, model_path: str, dtype: str, seed: int, device: str | None = None,
                 scripted_latency_s: float = 0.0, engine_kwargs: dict | None = None) -> Sampler:
    """The backend named by `rollout.backend`."""
    if backend == "hf":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return HFSampler(model_path, dtype=dtype, device=dev, seed=seed)
    if backend == "scripted":
        from skill1.rollout.scripted import ScriptedSampler

        return ScriptedSampler(model_path, seed=seed, latency_s=scripted_latency_s)
    if backend == "vllm":
        from skill1.rollout.vllm import VLLMSampler  # imports vLLM only when asked for

        return VLLMSampler(model_path, dtype=dtype, seed=seed, **(engine_kwargs or {}))
    raise ValueError(f"rollout.backend: unknown sampler backend {backend!r} (available: 'hf', 'scripted', 'vllm')")
