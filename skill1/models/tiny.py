"""A tiny, randomly initialised Qwen2-architecture policy, and the loader every policy goes through.

`init_tiny_model` writes a complete Hugging Face model dir (config.json, generation_config.json,
model.safetensors, tokenizer files): the Qwen2 architecture, much smaller, with either the real Qwen2.5
tokenizer (152k tokens) or a small byte-level BPE trained on the built-in env's text that keeps Qwen's chat
format and special tokens (`skill1.models.env_tokenizer`). On a CPU the 152k-token output layer is nearly
the whole cost of a step; the small vocabulary buys a body large enough to learn. `load_policy` is the one code path that loads a policy — the tiny one on a laptop or
Qwen2.5-7B-Instruct on a GPU cluster — so nothing in it is specific to the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from skill1.models.tokenizer import (EOS_TOKEN, NUM_BPE_RANKS, PAD_TOKEN, SPECIAL_TOKEN_IDS, VOCAB_SIZE,
                                    build_qwen_tokenizer)

EOS_TOKEN_ID = SPECIAL_TOKEN_IDS[EOS_TOKEN]  # 151645 <|im_end|>
PAD_TOKEN_ID = SPECIAL_TOKEN_IDS[PAD_TOKEN]  # 151643 <|endoftext|>


@dataclass
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64 (vLLM's CPU backend needs 64)
    num_kv_heads: int = 1
    intermediate_size: int = 384
    max_position_embeddings: int = 4096
    # Qwen2.5 uses 1e6 for 32k contexts; over a few hundred tokens that leaves most RoPE dimensions nearly still,
    # and a tiny policy must point at exact positions (copy an admissible action from its prompt)
    rope_theta: float = 10000.0
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def tiny_config(spec: TinyModelSpec, vocab_size: int = VOCAB_SIZE, eos_id: int = EOS_TOKEN_ID,
                pad_id: int = PAD_TOKEN_ID) -> Qwen2Config:
    if spec.hidden_size % spec.num_heads or spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"hidden_size ({spec.hidden_size}) must be divisible by num_heads ({spec.num_heads}) "
                         f"and num_heads by num_kv_heads ({spec.num_kv_heads})")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=pad_id,  # as Qwen2.5's config.json: <|endoftext|>; the tokenizer adds no bos
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )


def init_tiny_model(out_dir: str, spec: TinyModelSpec = TinyModelSpec(), tokenizer=None) -> str:
    """Write a randomly initialised tiny Qwen2 model and its tokenizer (default: Qwen2.5's) to `out_dir`.

    Deterministic: the same spec and tokenizer give identical weights. Returns `out_dir`.
    """
    tokenizer = tokenizer if tokenizer is not None else build_qwen_tokenizer()
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    # Qwen2.5 pads its embedding to 151,936 rows; a small vocabulary gets exactly its own size
    vocab = VOCAB_SIZE if len(tokenizer) > NUM_BPE_RANKS else len(tokenizer)
    config = tiny_config(spec, vocab, eos_id, pad_id)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG state alone
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return str(out_dir)


def attention_implementation(device: str, dtype) -> str:
    """flash-attn 2 on a CUDA device in half precision when the package is installed (the `gpu` extra),
    else PyTorch's SDPA: same results, flash-attn is faster and leaner on long prompts."""
    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def load_policy(path: str, dtype: str = "float32", device: str = "cpu"):
    """Load `(model, tokenizer)` from a Hugging Face model dir; the tokenizer pads on the left."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {path!r} (expected a Hugging Face model dir with config.json): run "
            f"`skill1 model init-tiny --out {path}` to create the tiny local policy, or point model.path "
            "at a Hugging Face model dir (e.g. Qwen2.5-7B-Instruct)")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    hf_logging.disable_progress_bar()  # a bar per load/save in every actor drowns the training log
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                 attn_implementation=attention_implementation(device, torch_dtype))
    model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # generation needs a pad token for batches
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
