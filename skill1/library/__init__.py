"""The skill library: a frozen sentence encoder and a versioned LanceDB skill table.

Exports resolve lazily: importing LanceDB starts its async runtime and makes every later fork of the
process (Ray's and wandb's start-up spawn subprocesses) unsafe, so only code that opens a library pays it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_ENCODER": "skill1.library.encoder",
    "Encoder": "skill1.library.encoder",
    "resolve_encoder_path": "skill1.library.encoder",
    "IntakeReport": "skill1.algo.skill_intake",
    "LibraryEncoderMismatch": "skill1.library.store",
    "LibraryNotFound": "skill1.library.store",
    "SkillLibrary": "skill1.library.store",
    "skill_schema": "skill1.library.store",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from skill1.algo.skill_intake import IntakeReport
    from skill1.library.encoder import DEFAULT_ENCODER, Encoder, resolve_encoder_path
    from skill1.library.store import LibraryEncoderMismatch, LibraryNotFound, SkillLibrary, skill_schema


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'skill1.library' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
