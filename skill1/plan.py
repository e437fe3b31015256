"""Per-GPU memory budget of a layout, before any actor starts (`skill1 plan`, and `skill1 train`'s pre-flight).

Pure arithmetic on the model's config.json and the run config: no weights are loaded, no GPU is touched. The
estimate is deliberately an upper bound where the real figure depends on the data (every token of a
micro-batch is counted as a generated one, which needs vocabulary logits), so a layout it accepts fits, and a
layout it refuses is refused with one line naming the largest term and what to change.

Learner rank (bf16 training, AdamW, DeepSpeed ZeRO stage s over N ranks; P parameters, b bytes each):
  weights     P*b / (N if s == 3 else 1)
  gradients   P*g / (N if s >= 2 else 1)      g = 4 with fp32 gradient accumulation, else b
  optimizer   12*P / (N if s >= 1 else 1)     fp32 master copy + Adam's two moments
  reference   P*b / (N if sharded else 1)     the frozen KL reference (learner.shard_reference under ZeRO-3)
  activations micro_batch_tokens * per_token
  per_token   without checkpointing: L * b * (6h + 2kv + 4I)        (per layer: norms' in/out, q, attention out,
              with checkpointing:    L * b * h + b * (6h + 2kv + 4I)  k, v, SwiGLU's four I-wide tensors)
              plus the logits: V * (b + 12)                           (bf16 logits, fp32 copy, its gradient,
                                                                       the log-softmax's fp32 temporaries)
  ZeRO buffers E = learner.zero_bucket_elements: stage 1/2 with overlap_comm 4.5 * 2 * E * g (DeepSpeed's own
              rule for its reduce + all-gather buckets); stage 3 2 * E * g (reduce) + E * b (prefetched params)
  weight sync one bucket gathered + its concatenation (collective, object store); the whole flat buffer, kept
              for the samplers to map (cuda_ipc)
  runtime     CUDA context and allocator slack: a fixed 2 GiB
vLLM sampler GPU: weights P*b, then gpu_memory_utilization * GPU memory caps weights + KV cache; the KV cache
  holds 2 * L * kv * b bytes per token. Colocated, a learner rank and a sampler share one GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GiB = 2**30
RUNTIME_BYTES = 2 * GiB


class LayoutDoesNotFit(ValueError):
    """The layout cannot fit the GPU memory it names (one line: what overflows, and what to change)."""


@dataclass(frozen=True)
class ModelShape:
    """What the budget needs of a decoder-only transformer (Qwen2 / Llama family)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        q_dim = self.heads * self.head_dim
        # q, k, v with biases (Qwen2), o without; SwiGLU gate/up/down; two RMSNorms
        layer = h * q_dim + q_dim + 2 * (h * kv + kv) + q_dim * h + 3 * h * i + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], intermediate=cfg["intermediate_size"],
                   heads=heads, kv_heads=cfg.get("num_key_value_heads", heads), vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads)

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelShape":
        config = Path(path) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"no config.json in {path}: the plan needs the model's Hugging Face config")
        return cls.from_config(json.loads(config.read_text()))


@dataclass(frozen=True)
class Layout:
    """The run config's keys the budget depends on."""

    gpu_gb: float  # memory of one GPU, GB (10**9 bytes, as vendors name cards)
    ranks: int = 1
    zero_stage: int = 3
    dtype_bytes: int = 2
    fp32_grad_accum: bool = True
    shard_reference: bool = False
    kl: bool = True
    gradient_checkpointing: bool = False
    micro_batch_tokens: int = 8192
    zero_bucket_elements: int = 50_000_000
    weight_sync: str = "collective"
    bucket_bytes: int = 256 * 2**20
    sampler_gpu_memory_utilization: float = 0.5
    colocate: bool = False


@dataclass
class Budget:
    """Bytes per term, for one learner GPU and one sampler GPU."""

    learner: dict[str, int] = field(default_factory=dict)
    sampler: dict[str, int] = field(default_factory=dict)
    gpu_bytes: int = 0
    kv_tokens: int = 0  # tokens the sampler's KV cache holds

    def problems(self) -> list[str]:
        out = []
        total = sum(self.learner.values())
        if total > self.gpu_bytes:
            big = max(self.learner, key=self.learner.get)
            out.append(f"learner rank needs {total / GiB:.1f} GiB of a {self.gpu_bytes / GiB:.1f} GiB GPU "
                       f"(largest: {big} {self.learner[big] / GiB:.1f} GiB): {_advice(big)}")
        if self.sampler and self.kv_tokens <= 0:
            out.append(f"vLLM sampler: the weights ({self.sampler['weights'] / GiB:.1f} GiB) leave no KV cache "
                       f"within gpu_memory_utilization of a {self.gpu_bytes / GiB:.1f} GiB GPU: raise "
                       f"rollout.gpu_memory_utilization or use tensor parallelism")
        return out


def _advice(term: str) -> str:
    return {
        "activations": "turn on learner.gradient_checkpointing or lower learner.micro_batch_tokens",
        "optimizer": "use more learner ranks (learner.num_ranks) with learner.zero_stage >= 1",
        "gradients": "use more learner ranks with learner.zero_stage >= 2",
        "weights": "use learner.zero_stage=3 over more ranks",
        "reference": "set learner.shard_reference=true (ZeRO-3) or learner.kl_coef=0",
        "zero_buffers": "lower learner.zero_bucket_elements",
        "weight_sync": "lower learner.weight_sync_bucket_mb, or use collective weight sync",
        "sampler (colocated)": "lower rollout.gpu_memory_utilization, or place samplers on GPUs of their own",
    }.get(term, "use GPUs with more memory")


def activation_bytes_per_token(m: ModelShape, b: int, checkpointing: bool) -> int:
    layer = b * (6 * m.hidden + 2 * m.kv_dim + 4 * m.intermediate)
    body = m.layers * b * m.hidden + layer if checkpointing else m.layers * layer
    return body + m.vocab * (b + 12)


def _zero_buffers(stage: int, e: int, g: int, b: int) -> int:
    if stage == 0:
        return 0
    return int(4.5 * 2 * e * g) if stage < 3 else 2 * e * g + e * b


def budget(m: ModelShape, lay: Layout) -> Budget:
    p, b, n, s = m.params, lay.dtype_bytes, lay.ranks, lay.zero_stage
    g = 4 if lay.fp32_grad_accum and s >= 1 else b
    learner = {
        "weights": p * b // (n if s == 3 else 1),
        "gradients": p * g // (n if s >= 2 else 1),
        "optimizer": 12 * p // (n if s >= 1 else 1),
        "reference": (p * b // (n if lay.shard_reference and s == 3 else 1)) if lay.kl else 0,
        "activations": lay.micro_batch_tokens * activation_bytes_per_token(m, b, lay.gradient_checkpointing),
        "zero_buffers": _zero_buffers(s, min(lay.zero_bucket_elements, p), g, b),
        "weight_sync": p * b if lay.weight_sync == "cuda_ipc" else 2 * min(lay.bucket_bytes, p * b),
        "runtime": RUNTIME_BYTES,
    }
    gpu = int(lay.gpu_gb * 1e9)
    sampler, kv_tokens = {}, 0
    if lay.sampler_gpu_memory_utilization > 0:
        cap = int(lay.sampler_gpu_memory_utilization * gpu)
        sampler = {"weights": p * b, "kv_cache": max(cap - p * b, 0)}
        kv_tokens = sampler["kv_cache"] // (2 * m.layers * m.kv_dim * b)
        if lay.colocate:
            learner["sampler (colocated)"] = cap
    return Budget(learner=learner, sampler=sampler, gpu_bytes=gpu, kv_tokens=kv_tokens)


def layout_of_config(cfg, gpu_gb: float) -> Layout:
    """The Layout a Skill1Config asks for, on GPUs of `gpu_gb` GB."""
    learner, rollout = cfg.learner, cfg.rollout
    return Layout(gpu_gb=gpu_gb, ranks=learner.num_ranks, zero_stage=learner.zero_stage,
                  dtype_bytes=4 if cfg.model.dtype == "float32" else 2, fp32_grad_accum=learner.fp32_grad_accum,
                  shard_reference=learner.shard_reference, kl=learner.kl_coef > 0,
                  gradient_checkpointing=learner.gradient_checkpointing, micro_batch_tokens=learner.micro_batch_tokens,
                  zero_bucket_elements=int(learner.zero_bucket_elements),
                  weight_sync=learner.weight_sync, bucket_bytes=int(learner.weight_sync_bucket_mb * 2**20),
                  sampler_gpu_memory_utilization=rollout.gpu_memory_utilization if rollout.backend == "vllm" else 0.0,
                  colocate=cfg.placement.mode == "colocate")


def render(m: ModelShape, lay: Layout, bud: Budget) -> str:
    lines = [f"model: {m.params / 1e9:.2f} B parameters, {m.layers} layers, hidden {m.hidden}, vocab {m.vocab}",
             f"layout: {lay.ranks} learner rank(s), ZeRO-{lay.zero_stage}, micro-batch {lay.micro_batch_tokens} "
             f"tokens, checkpointing {'on' if lay.gradient_checkpointing else 'off'}, GPU {lay.gpu_gb:g} GB",
             "learner rank, per GPU:"]
    lines += [f"  {k:<20} {v / GiB:8.2f} GiB" for k, v in bud.learner.items()]
    lines.append(f"  {'total':<20} {sum(bud.learner.values()) / GiB:8.2f} GiB of {bud.gpu_bytes / GiB:.2f}")
    if bud.sampler:
        lines.append("vLLM sampler, per GPU:")
        lines += [f"  {k:<20} {v / GiB:8.2f} GiB" for k, v in bud.sampler.items()]
        lines.append(f"  KV cache holds ~{bud.kv_tokens:,} tokens")
    problems = bud.problems()
    lines.append("fits" if not problems else "DOES NOT FIT: " + "; ".join(problems))
    return "\n".join(lines)


def check(cfg, gpu_gb: float) -> Budget:
    """The pre-flight: raise LayoutDoesNotFit (one line) when the config's layout cannot fit `gpu_gb` GPUs."""
    m = ModelShape.from_dir(cfg.model.path)
    bud = budget(m, layout_of_config(cfg, gpu_gb))
    problems = bud.problems()
    if problems:
        raise LayoutDoesNotFit(f"{cfg.name}: " + "; ".join(problems))
    return bud
