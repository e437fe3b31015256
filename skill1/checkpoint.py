"""Checkpoints: everything a run needs to continue where it stopped, written so a crash never leaves half of one.

    runs/<name>/checkpoints/
        iter-<k>/        one complete checkpoint, taken between iterations (nothing in flight)
            policy/      HF model dir of the policy (evaluation, or a fresh start from it)
            learner/     DeepSpeed checkpoint with optimizer state (torch state for learner.backend=torch),
                         and each rank's RNG state
            state.json   `TrainState`: iteration, policy version, library tag, task-plan cursor, consumed ids
            driver.json  the driver's RNG states and the finished rollout groups not yet trained (async)
        latest           "iter-<k>": the newest complete checkpoint; replaced atomically, after the rest
        final/           the policy at the end of the run (written beside, then renamed)
    runs/<name>/trained.jsonl  one line per trained batch: its groups and episode ids (the consumed ledger)

A checkpoint is written into `iter-<k>.partial/` and renamed when complete; `latest` moves last. A run killed
at any moment (kill -9 included) resumes from the newest complete checkpoint: the library goes back to that
checkpoint's tag (later writes rolled back), metrics and ledger lines of later iterations are dropped, and
the groups that were running are played again from their deterministic task-plan entries.

Everything the driver writes is JSON, read back against the reader's own types (`skill1.serialization`):
loading a checkpoint never runs code from it, whoever made the run directory. Files are fsynced, and the
directories holding them, before a rename publishes them: `latest` never names a checkpoint a power cut
can tear. A checkpoint is published only when every learner rank's state is in it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from skill1.serialization import (DecodeError, from_jsonable, numpy_rng_state, python_rng_state, set_numpy_rng_state,
                                  set_python_rng_state)

LATEST = "latest"
DRIVER = "driver.json"
FINAL = "final"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is (damaged, foreign, incomplete): one line for the user."""


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
    reason: str = "periodic"  # periodic | final (after the last iteration) | sigterm | on request (RLlib save)
    saved_at: float = field(default_factory=time.time)
    prompt_version: str | None = None  # the prompts the run was trained with (resume refuses another)


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    buffer: list  # finished, accepted, untrained rollout groups (async), as plain JSON values
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
    return {"python": python_rng_state(), "numpy": numpy_rng_state()}


def restore_driver_rng(state: dict) -> None:
    try:
        set_python_rng_state(state["python"])
        set_numpy_rng_state(state["numpy"])
    except DecodeError as e:
        raise CheckpointError(f"damaged checkpoint: {e}") from None


def learner_files(learner_ranks: int) -> list[str]:
    """What a complete checkpoint holds besides state.json / driver.json: the policy, every rank's state."""
    return ["policy/config.json", *(f"learner/rng-rank{r}.pt" for r in range(learner_ranks))]


def write_checkpoint(run_dir: Path, state: TrainState, buffer: list, save_learner, keep: int,
                     learner_ranks: int = 1) -> Path:
    """Write checkpoint `iter-<state.iteration>`; `save_learner(policy_dir, learner_dir)` writes the model
    side (every learner rank takes part). `buffer` holds plain JSON values (`to_jsonable`). Older checkpoints
    beyond the newest `keep` are removed."""
    root = checkpoints_dir(run_dir)
    final = root / f"iter-{state.iteration}"
    partial = root / f"iter-{state.iteration}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # a crash during an earlier attempt
    partial.mkdir(parents=True)
    save_learner(str(partial / "policy"), str(partial / "learner"))
    missing = [f for f in learner_files(learner_ranks) if not (partial / f).is_file()]
    if missing:  # a rank that failed quietly must not leave `latest` naming a checkpoint it cannot resume
        raise CheckpointError(f"checkpoint {final.name}: the learner did not write {', '.join(missing)}; "
                              f"`latest` stays at the previous checkpoint")
    (partial / "state.json").write_text(json.dumps(dataclasses.asdict(state), indent=1))
    (partial / DRIVER).write_text(json.dumps({"rng": driver_rng_state(), "buffer": buffer}))
    fsync_tree(partial)
    shutil.rmtree(final, ignore_errors=True)  # the same iteration saved again (e.g. SIGTERM right after)
    os.replace(partial, final)
    fsync_dir(root)
    write_atomic(root / LATEST, final.name)
    _prune(root, keep, final.name)
    return final


def publish_dir(build, target: Path) -> Path:
    """`build(tmp_dir)` writes a directory beside `target`, which then replaces `target` in one rename (an old
    one is moved aside first and removed after): a crash leaves the old directory or the new, never half."""
    target = Path(target)
    tmp, old = target.with_name(target.name + ".partial"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    build(str(tmp))
    fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    root = checkpoints_dir(run_dir)
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    if not name.startswith("iter-") or "/" in name or not (root / name).is_dir():
        raise CheckpointError(f"{root / LATEST} names {name[:60]!r}, not a checkpoint of this run")
    return load_checkpoint(root / name)


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.json)")
    if not (path / DRIVER).is_file():
        if (path / "driver.pkl").exists():
            raise CheckpointError(f"{path} was written by an older Skill1 as a pickle, which is never loaded (a "
                                  f"pickle can run code); continue from a newer checkpoint or start the run again")
        raise CheckpointError(f"{path} is not a complete checkpoint (no {DRIVER})")
    try:
        state = from_jsonable(TrainState, json.loads((path / "state.json").read_text()))
        driver = json.loads((path / DRIVER).read_text())
        buffer, rng = driver["buffer"], driver["rng"]
        if not isinstance(buffer, list) or set(rng) != {"python", "numpy"}:
            raise ValueError("unexpected layout")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    return Checkpoint(path, state, buffer, rng)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a torn last line (a crash mid-write) is dropped with a warning, a bad line
    anywhere else is an error naming it."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if n == len(lines):
                warnings.warn(f"{path}: dropped a torn last line (a crash while it was written)", stacklevel=2)
                break
            raise CheckpointError(f"{path}: line {n} is not a JSON object") from None
        out.append(record)
    return out


def truncate_jsonl(path: Path, key: str, last: int) -> int:
    """Drop the lines whose `key` is beyond `last` (iterations after the checkpoint), and a torn last line;
    returns how many lines went."""
    path = Path(path)
    if not path.is_file():
        return 0
    total = sum(1 for line in path.read_text().splitlines() if line.strip())
    records = read_jsonl(path)
    bad = [n for n, r in enumerate(records, 1) if not isinstance(r.get(key), (int, float))]
    if bad:
        raise CheckpointError(f"{path}: line {bad[0]} has no numeric {key!r}")
    kept = [r for r in records if r[key] <= last]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return total - len(kept)


def write_atomic(path: Path, text: str) -> None:
    """Write beside, fsync, rename, fsync the directory: readers see the old text or the new, even after a
    power cut."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory, deepest first."""
    dirs = []
    for d, _, files in os.walk(root):
        dirs.append(d)
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        fsync_dir(Path(d))


def _prune(root: Path, keep: int, newest: str) -> None:
    if keep <= 0:
        return
    # only our own names: a stray iter-foo (a user's copy, an editor's backup) is neither counted nor removed
    done = sorted((p for p in root.glob("iter-*") if p.is_dir() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))
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
