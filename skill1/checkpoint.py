"""Checkpoints: everything a run needs to continue where it stopped, written so a crash never leaves half of one.

    runs/<name>/checkpoints/
        iter-<k>/        one complete checkpoint, taken between iterations (nothing in flight)
            policy/      HF model dir of the policy (evaluation, or a fresh start from it)
            learner/     DeepSpeed checkpoint with optimizer state (torch state for learner.backend=torch),
                         and each rank's RNG state
            state.json   `TrainState`: iteration, policy version, library tag, task-plan cursor, consumed ids
            driver.pkl   the driver's RNG state and the finished rollout groups not yet trained (async)
        latest           "iter-<k>": the newest complete checkpoint; replaced atomically, after the rest
        final/           the policy at the end of the run
    runs/<name>/trained.jsonl  one line per trained batch: its groups and episode ids (the consumed ledger)

A checkpoint is written into `iter-<k>.partial/` and renamed when complete; `latest` moves last. A run killed
at any moment (kill -9 included) resumes from the newest complete checkpoint: the library goes back to that
checkpoint's tag (later writes rolled back), metrics and ledger lines of later iterations are dropped, and
the groups that were running are played again from their deterministic task-plan entries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LATEST = "latest"


@dataclass
class TrainState:
    """What `state.json` holds: the driver's side of a run at an iteration boundary."""

    iteration: int  # batches trained; also the metrics step of the last one logged
    policy_version: int  # learner updates done (= iteration: every iteration is one update)
    library_tag: str | None  # "iter-<k>", the library as that batch left it
    library_version: int
    next_seq: int  # the next rollout group to admit (task-plan position)
    running_seqs: list[int]  # admitted, not finished when the checkpoint was taken: played again on resume
    trained_groups: list[int]  # group numbers trained so far
    consumed_episodes: list[str]  # ids of the episodes trained so far
    reference_model: str  # the frozen KL reference (and the samplers' starting weights)
    wandb_run_id: str | None
    reason: str = "periodic"  # periodic | sigterm
    saved_at: float = field(default_factory=time.time)


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    buffer: list  # finished, accepted, untrained rollout groups (async)
    driver_rng: dict

    @property
    def policy_dir(self) -> Path:
        return self.path / "policy"

    @property
    def learner_dir(self) -> Path:
        return self.path / "learner"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def driver_rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state()}


def restore_driver_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def write_checkpoint(run_dir: Path, state: TrainState, buffer: list, save_learner, keep: int) -> Path:
    """Write checkpoint `iter-<state.iteration>`; `save_learner(policy_dir, learner_dir)` writes the model
    side (every learner rank takes part). Older checkpoints beyond the newest `keep` are removed."""
    root = checkpoints_dir(run_dir)
    final = root / f"iter-{state.iteration}"
    partial = root / f"iter-{state.iteration}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # a crash during an earlier attempt
    partial.mkdir(parents=True)
    save_learner(str(partial / "policy"), str(partial / "learner"))
    (partial / "state.json").write_text(json.dumps(dataclasses.asdict(state), indent=1))
    with (partial / "driver.pkl").open("wb") as f:
        pickle.dump({"rng": driver_rng_state(), "buffer": buffer}, f)
    shutil.rmtree(final, ignore_errors=True)  # the same iteration saved again (e.g. SIGTERM right after)
    os.replace(partial, final)
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep, final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    root = checkpoints_dir(run_dir)
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return load_checkpoint(root / name)


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.json)")
    state = TrainState(**json.loads((path / "state.json").read_text()))
    with (path / "driver.pkl").open("rb") as f:
        driver = pickle.load(f)
    return Checkpoint(path, state, driver["buffer"], driver["rng"])


def truncate_jsonl(path: Path, key: str, last: int) -> int:
    """Drop the lines whose `key` is beyond `last` (iterations after the checkpoint); returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)[key] <= last]
    _write_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int, newest: str) -> None:
    if keep <= 0:
        return
    done = sorted((p for p in root.glob("iter-*") if p.is_dir() and not p.name.endswith(".partial")),
                  key=lambda p: int(p.name.split("-")[1]))
    for old in [p for p in done if p.name != newest][:max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


class StopRequest:
    """SIGTERM (`ray job stop`, Kubernetes eviction, a scheduler's preemption) asks the loop to checkpoint at
    its next consistent point and stop. Installed only in the main thread, where Python delivers signals;
    the previous handler comes back on `restore()`."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.requested = signal.Signals(signum).name.lower()

    def __bool__(self) -> bool:
        return self.requested is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
