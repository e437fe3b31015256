"""A tiny, randomly initialised Qwen2-architecture policy, and the loader every policy goes through.

`init_tiny_model` writes a complete Hugging Face model dir (config.json, generation_config.json,
model.safetensors, tokenizer files): the real Qwen2.5 tokenizer and vocabulary, the Qwen2 architecture,
only much smaller. `load_policy` is the one code path that loads a policy — the tiny one on a laptop or
Qwen2.5-7B-Instruct on a GPU cluster — so nothing in it is specific to the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from skill1.models.tokenizer import PAD_TOKEN, SPECIAL_TOKEN_IDS, VOCAB_SIZE, EOS_TOKEN, build_qwen_tokenizer

EOS_TOKEN_ID = SPECIAL_TOKEN_IDS[EOS_TOKEN]  # 151645 <|im_end|>
PAD_TOKEN_ID = SPECIAL_TOKEN_IDS[PAD_TOKEN]  # 151643 <|endoftext|>


@dataclass
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64 (vLLM's CPU backend needs 64)
    num_kv_heads: int = 1
    intermediate_size: int = 256
    max_position_embeddings: int = 4096
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def tiny_config(spec: TinyModelSpec) -> Qwen2Config:
    if spec.hidden_size % spec.num_heads or spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"hidden_size ({spec.hidden_size}) must be divisible by num_heads ({spec.num_heads}) "
                         f"and num_heads by num_kv_heads ({spec.num_kv_heads})")
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=PAD_TOKEN_ID,  # as Qwen2.5's config.json: <|endoftext|>; the tokenizer adds no bos
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        dtype="float32",
    )


def init_tiny_model(out_dir: str, spec: TinyModelSpec = TinyModelSpec()) -> str:
    """Write a randomly initialised tiny Qwen2 model and the Qwen2.5 tokenizer to `out_dir`.

    Deterministic: the same spec gives identical weights. Returns `out_dir`.
    """
    config = tiny_config(spec)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG state alone
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=PAD_TOKEN_ID,
        eos_token_id=[EOS_TOKEN_ID, PAD_TOKEN_ID],
        pad_token_id=PAD_TOKEN_ID,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    build_qwen_tokenizer().save_pretrained(str(out))
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
