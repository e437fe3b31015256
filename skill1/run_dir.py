"""What Skill1 may delete, and who may write where.

Skill1 removes a directory only when it made it: a run directory carries a `.skill1-run` marker from its
creation, a built model directory its `skill1_provenance.json`. Anything else (the working directory reached
through `name=..`, a folder of models, a user's own model) is refused with one line, whatever `overwrite`
says. One process at a time writes a run directory or builds a model: an exclusive `flock` on a lock file
beside it, held for the life of the process (the kernel drops it when the process dies, so a kill -9 leaves
no stale lock), with the holder's pid in it for the message the second process prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

RUN_MARKER = ".skill1-run"
MODEL_MARKER = "skill1_provenance.json"  # written by the tiny-model build, last, before the rename


class OwnershipError(ValueError):
    """A directory Skill1 did not make, or one another process holds (one line for the user)."""


def check_name(name: str, key: str = "name") -> None:
    """A run name is one plain path component: never '', '.', '..', or anything with a separator."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise OwnershipError(f"{key}: must be a plain directory name (no '/', not '.' or '..'), got {name!r}")


def is_run_dir(path: Path) -> bool:
    """Marked at creation; or made before markers existed: a Skill1 config.yaml beside its metrics.jsonl."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    try:
        legacy = (path / "metrics.jsonl").is_file() and "algorithm:" in (path / "config.yaml").read_text()[:100_000]
    except (OSError, UnicodeDecodeError):
        return False
    return legacy


def is_empty_dir(path: Path) -> bool:
    return Path(path).is_dir() and not any(Path(path).iterdir())


def mark_run_dir(path: Path) -> None:
    (Path(path) / RUN_MARKER).write_text(json.dumps({"created": time.time(), "pid": os.getpid()}) + "\n")


def fresh_run_dir(path: Path, overwrite: bool) -> Path:
    """Make `path` an empty run directory, marked as ours. An existing non-empty one is replaced only with
    `overwrite` and only when it is a Skill1 run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OwnershipError(f"name: {path} exists and is not a directory")
    if path.is_dir() and not is_empty_dir(path):
        if not overwrite:
            raise OwnershipError(f"name: {path} already holds a run; pass name=<new name> or overwrite=true")
        if not is_run_dir(path):
            raise OwnershipError(f"overwrite: {path} is not a Skill1 run directory (no {RUN_MARKER}); refusing to "
                                 f"delete it: pick another name, or remove it yourself")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    mark_run_dir(path)
    return path


def check_model_dir_replaceable(path: Path) -> None:
    """The tiny model is built into an absent or empty directory, or over a tiny model built before."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (is_empty_dir(path) or (path / MODEL_MARKER).is_file())):
        raise OwnershipError(f"model.path: {path} exists and is not a tiny model Skill1 built (no {MODEL_MARKER}); "
                             f"refusing to replace it: point model.path / --out at a new directory")


class DirLock:
    """An exclusive, non-blocking lock on `<parent>/.<name>.lock` for the life of this object's holder."""

    def __init__(self, target: Path, what: str):
        self.target, self.what = Path(target).resolve(), what
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OwnershipError(f"{self.target} is in use by another {self.what} (pid {holder}; lock "
                                 f"{self.path}): wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking races with a new holder)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
