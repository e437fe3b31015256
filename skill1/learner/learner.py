"""The learner: PPO-clip + KL updates on token-level advantages, DeepSpeed engine (or torch AdamW).

Only this package knows DeepSpeed (its set-up: engine.py). On CPU it runs ZeRO-2 over gloo in one process; on GPU
the same engine config takes bf16 and ZeRO-2/3; several ranks form a data-parallel group (`join_learner_group`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time

import torch

from skill1.algo.losses import ppo_clip_loss
from skill1.config import LearnerConfig
from skill1.learner.batching import MicroBatch, collate, split_by_token_budget
from skill1.learner.engine import deepspeed_engine, join_learner_group, reference_engine
from skill1.learner.forward import response_logprobs
from skill1.learner.safe_load import load as safe_load
from skill1.learner.safe_load import weights_only_deepspeed
from skill1.learner.weight_source import WeightSource
from skill1.models.tiny import load_policy
from skill1.types import Stage, TrainSample


def logprob_gap(samples: list[TrainSample], version: int) -> dict[str, float]:
    """Mean |behaviour - learner| log-prob per token, over all samples and over those the current weights sampled
    (`_fresh`: there the gap is the sampler's numerics alone, e.g. vLLM's kernels against transformers'; it
    should stay near 0, and a large one clips PPO ratios for no reason of the policy's)."""
    def mean_gap(chosen: list[TrainSample]) -> float:
        diffs = [abs(a - b) for s in chosen for a, b in zip(s.old_logprobs, s.proximal_logprobs)]
        return sum(diffs) / len(diffs) if diffs else 0.0

    fresh = [s for s in samples if s.policy_version == version]
    return {"learner/logprob_gap": mean_gap(samples), "learner/logprob_gap_fresh": mean_gap(fresh),
            "learner/fresh_samples": float(len(fresh))}


def _peak_memory() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"learner/peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    import resource

    return {"learner/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class NonFiniteUpdates(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient (`learner.max_nonfinite_skips`)."""


def _grad_norm(model: torch.nn.Module) -> float:
    """2-norm of the gradients held in `.grad` (inf or NaN when any of them is)."""
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


class Learner(WeightSource):
    """One learner rank. With `world > 1` the ranks are data parallel: each gets a shard of every batch and
    DeepSpeed averages their gradients (the loss is normalised by the token count of all ranks, so 1 and N
    ranks give the same gradient); rank 0's weights are the ones synced to samplers and saved. A step whose
    loss or gradient is not finite is skipped on every rank (`learner/skipped_nonfinite`), and
    `learner.max_nonfinite_skips` of them in a row stop the run."""

    def __init__(self, model_path: str, cfg: LearnerConfig, *, dtype: str = "float32", temperature: float = 1.0,
                 seed: int = 0, rank: int = 0, world: int = 1, store: tuple[str, int] | None = None):
        if world > 1:
            if cfg.backend != "deepspeed" or store is None:
                raise ValueError("several learner ranks need learner.backend=deepspeed and a rendezvous store")
            join_learner_group(rank, world, *store)
        self.rank, self.world = rank, world
        torch.manual_seed(seed)
        self.cfg, self.temperature, self.rng = cfg, temperature, random.Random(seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, self.tokenizer = load_policy(model_path, dtype=dtype, device=device)
        self.reference, _ = load_policy(model_path, dtype=dtype, device=device)
        self.reference.eval().requires_grad_(False)
        model.train()
        if cfg.gradient_checkpointing:  # activations of one layer at a time, recomputed in the backward pass
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.device = torch.device(device)
        self.engine = None
        if cfg.backend == "deepspeed":
            self.engine = deepspeed_engine(model, cfg, bf16=dtype == "bfloat16")
            self.model = self.engine.module
            if cfg.shard_reference:
                self.reference = reference_engine(self.reference, bf16=dtype == "bfloat16")
        else:
            self.model = model
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.version = 0
        self.nonfinite_in_a_row = 0  # skipped optimizer steps since the last finite one (across updates)

    def update(self, samples: list[TrainSample], recompute_proximal: bool = False) -> dict[str, float]:
        """ppo_epochs x mini_batches optimizer steps over `samples`; returns learner metrics.

        `recompute_proximal` (asynchronous training): the PPO ratio is taken against this learner's own
        log-probs before the update, and the gap to the behaviour policy that sampled the data is
        corrected by a truncated importance weight (decoupled PPO). Off, the behaviour log-probs are the
        proximal ones (on-policy: the synchronous algorithm)."""
        if not samples and self.world == 1:  # still a policy version: every version number means one update call
            self.version += 1
            return {"learner/steps": 0.0, "learner/skipped_nonfinite": 0.0, "learner/version": float(self.version)}
        start, totals, steps, tokens, skipped = time.perf_counter(), {}, 0, 0, 0
        pad, self._is_max = self.tokenizer.pad_token_id, 0.0
        staleness = [self.version - s.policy_version for s in samples] or [0]
        gap = {}
        if recompute_proximal:
            samples = self._with_proximal(samples)
            gap = logprob_gap(samples, self.version)
        prox_s = time.perf_counter() - start
        for _ in range(self.cfg.ppo_epochs):
            order = samples[:]
            self.rng.shuffle(order)
            for mini in self._mini_batches(order):
                step_totals, num_tokens, grad_norm = self._train_mini_batch(mini, pad)
                if grad_norm is None:  # skipped: nothing of this mini-batch reached the weights or the metrics
                    skipped += 1
                    self._count_nonfinite()
                    continue
                self.nonfinite_in_a_row = 0
                for k, v in step_totals.items():
                    totals[k] = totals.get(k, 0.0) + v
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm * num_tokens
                steps, tokens = steps + 1, tokens + num_tokens
        self.version += 1
        elapsed = time.perf_counter() - start
        metrics = {f"learner/{k}": v / max(tokens, 1) for k, v in totals.items()}
        metrics.update({"learner/steps": float(steps), "learner/skipped_nonfinite": float(skipped),
                        "learner/tokens": float(tokens),
                        "learner/tokens_per_s": tokens / elapsed, "learner/update_s": elapsed,
                        "learner/ranks": float(self.world),
                        "learner/proximal_s": prox_s, "learner/version": float(self.version),
                        "learner/sample_staleness_mean": sum(staleness) / len(staleness),
                        "learner/is_weight_max": self._is_max, **gap, **_peak_memory()})
        return metrics

    def _train_mini_batch(self, mini: list[TrainSample], pad: int) -> tuple[dict[str, float], int, float | None]:
        """One optimizer step: (token-weighted sums of the loss terms, tokens, grad norm; None when a non-finite
        loss or gradient skipped the step)."""
        micro = [collate(g, pad) for g in split_by_token_budget(mini, self.cfg.micro_batch_tokens)]
        num_tokens = sum(mb.num_tokens for mb in micro)
        # a token mean over the mini-batch of all ranks together: DeepSpeed averages the ranks'
        # gradients (divides by world), so each rank divides its token sum by global tokens / world;
        # a per-rank token mean would weigh a token of a rank with few tokens more
        denom = max(self._all_ranks_sum(num_tokens), 1) / self.world
        # every rank runs the same number of forward/backward passes: ZeRO-3 gathers parameters in each
        # forward and ZeRO reduces gradients in each backward, collectives that hang when one rank runs
        # more of them; a rank with fewer micro-batches pads with zero-loss passes
        n_micro = max(self._all_ranks_max(len(micro)), 1) if self.world > 1 else len(micro)
        step_totals, finite = {}, True
        for j in range(n_micro):
            mb = micro[j] if j < len(micro) else None
            stats = self._micro_step(mb, denom, boundary=j == n_micro - 1)
            finite = finite and stats is not None
            for k, v in (stats or {}).items():
                step_totals[k] = step_totals.get(k, 0.0) + v * mb.num_tokens
        return step_totals, num_tokens, self._optimizer_step(finite)

    def _count_nonfinite(self) -> None:
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_skips:
            raise NonFiniteUpdates(
                f"learner: {self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                f"gradient (learner.max_nonfinite_skips={self.cfg.max_nonfinite_skips}); the weights are "
                f"those of the last finite step (policy version {self.version}). Lower learner.lr or "
                f"check the rewards and log-probs of the batch")

    @torch.no_grad()
    def _with_proximal(self, samples: list[TrainSample]) -> list[TrainSample]:
        """The same samples carrying this learner's log-probs of their tokens, before any step."""
        pad, out = self.tokenizer.pad_token_id, []
        groups = split_by_token_budget(samples, self.cfg.micro_batch_tokens)
        if self.world > 1:  # the same number of forwards on every rank (ZeRO-3 gathers in each)
            for _ in range(self._all_ranks_max(len(groups)) - len(groups)):
                response_logprobs(self.model, self._padding_batch(), self.temperature)
        for group in groups:
            mb = collate(group, pad)
            logp = response_logprobs(self.model, mb, self.temperature).float().cpu()
            offset = 0
            for sample in group:
                n = len(sample.old_logprobs)
                out.append(dataclasses.replace(sample, proximal_logprobs=logp[offset:offset + n].tolist()))
                offset += n
        return out

    def _mini_batches(self, order: list[TrainSample]) -> list[list[TrainSample]]:
        m = self.cfg.mini_batches
        if self.world > 1:  # every rank must take the same number of optimizer steps, even an empty one
            return [order[i::m] for i in range(m)]
        size = -(-len(order) // m)
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _padding_batch(self) -> MicroBatch:
        """One generated token of padding: a real forward (so ZeRO-3's gathers run as on the other ranks)."""
        pad = self.tokenizer.pad_token_id
        return collate([TrainSample([pad, pad], 1, [0.0], 0.0, Stage.ACT)], pad)

    def _padding_step(self, boundary: bool) -> None:
        """A forward and backward whose loss is 0 times the log-prob: zero gradients, the same collectives."""
        pad = self._padding_batch()
        if self.cfg.shard_reference and self.cfg.kl_coef > 0:  # the reference's forward gathers too
            with torch.no_grad():
                response_logprobs(self.reference, pad, self.temperature)
        loss = response_logprobs(self.model, pad, self.temperature).sum() * 0.0
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def _all_ranks_sum(self, n: int) -> int:
        return self._all_reduce_int(n, "SUM")

    def _all_ranks_max(self, n: int) -> int:
        return self._all_reduce_int(n, "MAX")

    def _all_reduce_int(self, n: int, op: str) -> int:
        if self.world == 1:
            return n
        import torch.distributed as dist

        total = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(total, op=getattr(dist.ReduceOp, op))
        return int(total.item())

    def _all_ranks_agree(self, applied: bool) -> bool:
        """Every rank must take or skip a step together, or their weights part ways for good."""
        if self.world == 1:
            return applied
        import torch.distributed as dist

        flags = torch.tensor([int(applied), int(not applied)], dtype=torch.int64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        if int(flags[0]) not in (0, self.world):
            raise RuntimeError(f"learner rank {self.rank}: {int(flags[0])} of {self.world} ranks applied an optimizer "
                               f"step the others skipped as non-finite; their weights now differ")
        return applied

    def _micro_step(self, mb: MicroBatch | None, denom: float, boundary: bool) -> dict[str, float] | None:
        """Forward + backward of one micro-batch; None when its loss is not finite (the step will be skipped).
        `mb` None: a padding pass (`_padding_step`), for a rank with fewer micro-batches than another."""
        if mb is None:
            self._padding_step(boundary)
            return {}
        logp = response_logprobs(self.model, mb, self.temperature)
        with torch.no_grad():
            ref_logp = response_logprobs(self.reference, mb, self.temperature) if self.cfg.kl_coef > 0 else None
        prox = mb.proximal_logprobs.to(self.device) if mb.proximal_logprobs is not None else None
        out = ppo_clip_loss(logp, mb.old_logprobs.to(self.device), mb.advantages.to(self.device),
                            torch.ones_like(logp), ref_logp=ref_logp, proximal_logp=prox,
                            clip_eps=self.cfg.clip_eps, kl_coef=self.cfg.kl_coef, is_cap=self.cfg.is_cap,
                            num_tokens=denom)
        finite = bool(torch.isfinite(out.loss))
        if self.engine is not None:
            # DeepSpeed's backward is collective (gradient hooks, the boundary all-reduce): it must still run.
            # A non-finite loss goes in times NaN: NaN gradients, whatever the loss, so the step skips below.
            loss = out.loss if finite else out.loss * math.nan
            self.engine.set_gradient_accumulation_boundary(boundary)
            self.engine.backward(loss, scale_wrt_gas=False)
        elif finite:
            out.loss.backward()
        if not finite:
            return None
        self._is_max = max(self._is_max, out.is_weight_max)
        return {"pg_loss": out.pg_loss, "kl": out.kl, "clip_frac": out.clip_frac,
                "is_weight": out.is_weight_mean, "is_truncated_frac": out.is_truncated_frac,
                "loss": out.loss.item() * denom / mb.num_tokens}

    def _optimizer_step(self, finite: bool) -> float | None:
        """One optimizer step; the gradient norm, or None when it was skipped because the loss (`finite`
        False) or the gradient was not finite: a NaN never reaches the weights, the optimizer's moments or a
        checkpoint, and every rank skips the same steps."""
        if self.engine is not None:
            if hasattr(self.engine.optimizer, "overflow"):
                # ZeRO-1/2/3 and the bf16 optimizer skip a step whose global (all-reduced) gradient norm is
                # inf/NaN themselves, on every rank alike
                self.engine.step()
                applied = self.engine.was_step_applied()
                norm = self.engine.get_global_grad_norm()
            else:
                # ZeRO-0 in fp32 steps a plain torch optimizer, which checks nothing; its gradients are whole and
                # already all-reduced at the boundary, so each rank reads the same verdict from them
                norm = _grad_norm(self.model)
                applied = math.isfinite(norm)
                if applied:
                    self.engine.step()
                else:
                    self.engine.zero_grad()
            norm = float(norm) if norm is not None else 0.0
            if self._all_ranks_agree(applied) and not (finite and math.isfinite(norm)):  # never expected: stop
                raise RuntimeError(f"learner rank {self.rank}: DeepSpeed applied a step with a non-finite loss or "
                                   f"gradient (norm {norm}); stopping before these weights are saved")
            return norm if applied else None
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        applied = finite and math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm if applied else None

    def save_state(self, out_dir: str) -> None:
        """Everything to continue training: weights, optimizer (DeepSpeed checkpoint, every rank writes its
        shards), version, and this rank's RNG states. `out_dir` must be shared by the ranks (one node, or a
        shared file system on a cluster)."""
        os.makedirs(out_dir, exist_ok=True)
        if self.engine is not None:
            self.engine.save_checkpoint(out_dir, tag="state", client_state={"version": self.version})
        elif self.rank == 0:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "version": self.version}, os.path.join(out_dir, "torch_state.pt"))
        rng = {"python": self.rng.getstate(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        torch.save(rng, os.path.join(out_dir, f"rng-rank{self.rank}.pt"))

    def load_state(self, in_dir: str) -> int:
        """The other half of `save_state`; returns the policy version it continues from. The reference
        model is not in it: it stays the frozen initial policy this learner was built from."""
        if self.engine is not None:
            with weights_only_deepspeed(self.engine):  # a run dir is data: nothing in it may run code
                path, client = self.engine.load_checkpoint(in_dir, tag="state", load_optimizer_states=True,
                                                           load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint 'state' under {in_dir}")
            self.version = int(client["version"])
        else:
            state = safe_load(os.path.join(in_dir, "torch_state.pt"), map_location=self.device)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.version = int(state["version"])
        rng = safe_load(os.path.join(in_dir, f"rng-rank{self.rank}.pt"))
        self.rng.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return self.version

    def save(self, out_dir: str) -> str:
        """A complete HF model dir (config, weights, tokenizer): loadable by the sampler, eval, or HF.
        Every rank calls it (ZeRO-3 gathers); rank 0 writes."""
        with self._gathered():
            if self.rank == 0:
                self.model.save_pretrained(out_dir)
                self.tokenizer.save_pretrained(out_dir)
        return out_dir
