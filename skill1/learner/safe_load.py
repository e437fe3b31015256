"""Loading learner state from a run directory without running code from it.

torch checkpoints are pickles. `torch.load(weights_only=True)` only rebuilds tensors, containers, numbers and
the classes explicitly allowed; DeepSpeed's own loader asks for `weights_only=False`, so its checkpoint engine
is given a weights-only `load` while we resume, with the three plain-data classes a ZeRO checkpoint holds
allowed by name. `scan` checks every pickle of a checkpoint in the driver before any actor starts: a file that
names anything else is refused with one line (nothing in it is executed: the scan reads the opcodes only).
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch

# What DeepSpeed (0.19) writes into ZeRO-1/2/3 optimizer states: an enum, a loss-scale holder, and a
# (numel, start) dataclass. None has custom unpickling logic.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class UnsafeCheckpoint(ValueError):
    """A learner-state file that would need code execution to load (one line for the user)."""


def _deepspeed_classes() -> list:
    import importlib

    out = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed layout: its files then fail the scan
            pass
    return out


def scan(learner_dir: str | Path) -> int:
    """Refuse the learner state under `learner_dir` if any pickle in it names a global outside torch's
    weights-only set and `DEEPSPEED_GLOBALS`. Returns the number of files checked."""
    files = sorted(p for p in Path(learner_dir).rglob("*") if p.is_file() and p.suffix in (".pt", ".pth", ".bin"))
    for f in files:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(f))
        except (RuntimeError, pickle.UnpicklingError, ValueError, EOFError, OSError) as e:
            raise UnsafeCheckpoint(f"{f}: not a torch checkpoint ({str(e).splitlines()[0][:120]})") from None
        foreign = sorted(set(unsafe) - set(DEEPSPEED_GLOBALS))
        if foreign:
            raise UnsafeCheckpoint(f"{f}: refers to {', '.join(foreign[:3])}, which loading would have to run; "
                                   f"refusing it (learner state holds tensors and plain data only)")
    return len(files)


def load(path: str | Path, map_location=None):
    """`torch.load` that builds tensors and plain data only."""
    with torch.serialization.safe_globals(_deepspeed_classes()):
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpoint(f"{path}: refused, it needs more than plain data to load "
                                   f"({str(e).splitlines()[0][:120]})") from None


@contextlib.contextmanager
def weights_only_deepspeed(engine):
    """While it lasts, `engine.load_checkpoint` reads every file with `load` instead of DeepSpeed's
    `torch.load(weights_only=False)`."""
    ce = engine.checkpoint_engine
    original = ce.load
    ce.load = lambda path, map_location=None: load(path, map_location)
    try:
        yield engine
    finally:
        ce.load = original
