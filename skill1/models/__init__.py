"""Policy models: the locally built Qwen2.5 tokenizer, the tiny Qwen2 policy, and the policy loader.

Exports resolve lazily, so `import skill1.models.<sub>` does not pull in torch/transformers by itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_qwen_tokenizer": "skill1.models.tokenizer",
    "save_tokenizer": "skill1.models.tokenizer",
    "qwen_tiktoken_path": "skill1.models.tokenizer",
    "CHAT_TEMPLATE": "skill1.models.tokenizer",
    "DEFAULT_SYSTEM_PROMPT": "skill1.models.tokenizer",
    "QWEN2_PATTERN": "skill1.models.tokenizer",
    "QWEN25_ADDED_TOKENS": "skill1.models.tokenizer",
    "SPECIAL_TOKEN_IDS": "skill1.models.tokenizer",
    "VOCAB_SIZE": "skill1.models.tokenizer",
    "TinyModelSpec": "skill1.models.tiny",
    "init_tiny_model": "skill1.models.tiny",
    "load_policy": "skill1.models.tiny",
    "count_parameters": "skill1.models.tiny",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from skill1.models.tiny import TinyModelSpec, count_parameters, init_tiny_model, load_policy
    from skill1.models.tokenizer import (
        CHAT_TEMPLATE,
        DEFAULT_SYSTEM_PROMPT,
        QWEN2_PATTERN,
        QWEN25_ADDED_TOKENS,
        SPECIAL_TOKEN_IDS,
        VOCAB_SIZE,
        build_qwen_tokenizer,
        qwen_tiktoken_path,
        save_tokenizer,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
