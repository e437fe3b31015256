"""Shared fixtures: tiny models built locally (save_pretrained → the real from_pretrained path)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

SMALL = dict(hidden_size=64, num_layers=2, num_heads=1, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> str:
    """A random 2-layer Qwen2 with a small env BPE (Qwen's chat format and special tokens, as the tiny policy
    has): the model of the component and end-to-end tests. With Qwen's 152k vocabulary the LM head is nearly all
    of a step at this width: one learner step of 8 x 400 tokens takes ~9 s, against ~0.15 s with this one."""
    from skill1.config import Skill1Config
    from skill1.models.env_tokenizer import train_env_tokenizer
    from skill1.models.tiny import TinyModelSpec, init_tiny_model
    from skill1.settings import episode_settings
    from skill1.tiny_policy.provision import env_corpus

    settings = episode_settings(Skill1Config(), training=True)
    tok = train_env_tokenizer(env_corpus(settings, num_tasks=30), vocab_size=1024)
    assert len(tok) >= 700, len(tok)  # tests draw token ids below 700
    return init_tiny_model(str(tmp_path_factory.mktemp("small-model")), TinyModelSpec(**SMALL), tok)


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory) -> str:
    """The same random model with the real Qwen2.5 tokenizer (what a real run uses): for the tests of
    tokenizer-specific behaviour (Qwen's token ids, vLLM's stop tokens)."""
    from skill1.models.tiny import TinyModelSpec, init_tiny_model

    return init_tiny_model(str(tmp_path_factory.mktemp("qwen-model")), TinyModelSpec(**SMALL))


@pytest.fixture(scope="session")
def tokenizer(qwen_model_dir):
    """Qwen2.5's tokenizer, as a real run has it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_model_dir)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the end-to-end tests of the session; shut down at the end."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()
