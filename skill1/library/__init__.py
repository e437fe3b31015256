"""The skill library: a frozen sentence encoder and a versioned LanceDB skill table."""

from skill1.library.encoder import DEFAULT_ENCODER, Encoder, resolve_encoder_path
from skill1.library.store import AdmissionReport, LibraryEncoderMismatch, SkillLibrary, skill_schema

__all__ = [
    "DEFAULT_ENCODER",
    "AdmissionReport",
    "Encoder",
    "LibraryEncoderMismatch",
    "SkillLibrary",
    "resolve_encoder_path",
    "skill_schema",
]
