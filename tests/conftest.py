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
    """A random 2-layer Qwen2 with the real Qwen tokenizer: for component tests of sampler/learner."""
    from skill1.models.tiny import TinyModelSpec, init_tiny_model

    return init_tiny_model(str(tmp_path_factory.mktemp("small-model")), TinyModelSpec(**SMALL))


@pytest.fixture(scope="session")
def tokenizer(small_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(small_model_dir)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the end-to-end tests of the session; shut down at the end."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()
