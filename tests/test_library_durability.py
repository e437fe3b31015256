"""Durability of the skill library across processes: a writer killed with SIGKILL in the middle of a write leaves
the table readable at its last committed version (no partial batch, every tag intact, writable again), and a
reader pinned at a tag sees nothing of a writer working in another process.

Writers run in fresh interpreters (subprocess / multiprocessing "spawn"): this process has used LanceDB, and a
fork after that is unsafe.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skill1.library import SkillLibrary
from skill1.types import SkillDraft

ENC, DIM, BATCH = "fake-encoder", 8, 200
REPO = str(Path(__file__).resolve().parents[1])

# Adds batches of BATCH skills with SkillLibrary.add (skill i of batch k: created_iteration k), tags "b-<k>"
# after every second batch and records the tags in <markers>/tags.json. mode "stream": once 3 tags exist, the
# next batch goes to the same LanceDB table as a slowly streamed write (data files are written while it
# streams, the commit comes only at its end); after two chunks it writes <markers>/in-write and waits to be
# killed. mode "loop": batches forever.
WRITER = r"""
import json, os, sys, time
import numpy as np, pyarrow as pa
from skill1.library.store import SkillLibrary, skill_schema
from skill1.types import SkillDraft
path, markers, mode, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lib = SkillLibrary.open(path, "fake-encoder", 8)
rng = np.random.default_rng(os.getpid())
k = lib.size() // batch
tags = sorted(lib.tags())

def mark(name, obj):
    tmp = os.path.join(markers, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, os.path.join(markers, name))

while True:
    if mode == "stream" and len(tags) >= 3:
        data_dir = os.path.join(path, "skills.lance", "data")
        before = sorted(os.listdir(data_dir))
        schema = skill_schema("fake-encoder", 8)
        vecs = rng.normal(size=(batch, 8))
        rows = [dict(id=f"stream-{k}-{i}", scenario="s " * 200, strategy="t", vector=list(vecs[i]), utility=0.0,
                     uses=0, wins=0, created_iteration=k, source_task="t", source_episode="e", parent_ids=[],
                     status="active") for i in range(batch)]
        table = pa.Table.from_pylist(rows, schema=schema)
        def chunks():
            for j, b in enumerate(table.to_batches(max_chunksize=batch // 10)):
                yield b
                if j == 1:
                    time.sleep(0.5)  # give the writer time to put the first rows into a data file
                    mark("in-write", {"version": lib.version, "data_files_before": before})
                    time.sleep(120)  # killed here: mid-write, before the commit
        lib._tbl.add(pa.RecordBatchReader.from_batches(schema, chunks()))
        raise SystemExit("not killed")
    n = batch
    drafts = [SkillDraft(f"k{k} skill {i} " + "x" * 100, "strategy") for i in range(n)]
    lib.add(drafts, rng.normal(size=(n, 8)).astype(np.float32), iteration=k, source_tasks=["t"] * n,
            source_episodes=["e"] * n, initial_utility=0.0, merge_threshold=2.0)
    k += 1
    if k % 2 == 0:
        lib.tag(f"b-{k}")
        tags.append(f"b-{k}")
        mark("tags.json", tags)
"""


def _start_writer(path: str, markers: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", WRITER, path, str(markers), mode, str(BATCH)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"writer did not get there in {timeout} s:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _tags_written(markers: Path) -> list[str]:
    try:
        return json.loads((markers / "tags.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _check_committed_state(path: str) -> SkillLibrary:
    """Reopen after a kill: whole batches only, each batch complete, every tag where it was put."""
    lib = SkillLibrary.open(path, ENC, DIM)
    skills = lib.all_skills(active_only=False)
    n = lib.size()
    assert n == len(skills) == lib._tbl.count_rows()  # the last committed version, read two ways
    assert n % BATCH == 0 and n > 0
    per_batch = np.bincount([s.created_iteration for s in skills])
    assert per_batch.tolist() == [BATCH] * (n // BATCH)  # batches 0..K-1, each complete, no partial one
    assert not [s for s in skills if s.id.startswith("stream-")]
    tags = lib.tags()
    assert tags and all(name == f"b-{int(name[2:])}" for name in tags)
    for name in tags:
        view = lib.checkout(name)
        assert view.size() == int(name[2:]) * BATCH, name  # "b-k" was taken right after batch k
    return lib


def test_kill_during_streamed_write_keeps_last_commit(tmp_path):
    path, markers = str(tmp_path / "lib"), tmp_path / "markers"
    markers.mkdir()
    SkillLibrary.open(path, ENC, DIM)
    proc = _start_writer(path, markers, "stream")
    try:
        _wait_for(proc, lambda: (markers / "in-write").exists())
    finally:
        if proc.poll() is None:
            _kill(proc)
    state = json.loads((markers / "in-write").read_text())
    data_dir = Path(path) / "skills.lance" / "data"
    partial = set(os.listdir(data_dir)) - set(state["data_files_before"])
    assert partial, "the kill should have landed after the write started putting rows into a data file"
    lib = _check_committed_state(path)
    assert lib.version == state["version"]  # nothing of the killed write was committed
    assert sorted(lib.tags()) == sorted(_tags_written(markers)) and len(lib.tags()) >= 3
    # still a working library: write, tag, compact (the orphaned partial file is not part of any version)
    n = lib.size()
    # merging off: among 1200 random 8-d skills one lies within cosine 0.95 of any vector ~10% of the time
    lib.add([SkillDraft("after the crash", "works")], np.ones((1, DIM), dtype=np.float32), iteration=n // BATCH,
            source_tasks=["t"], source_episodes=["e"], initial_utility=0.0, merge_threshold=2.0)
    lib.tag("after-crash")
    lib.compact()
    assert lib.size() == n + 1 and lib.checkout("after-crash").size() == n + 1
    for name in _tags_written(markers):
        assert lib.checkout(name).size() == int(name[2:]) * BATCH


def test_kill_at_random_points_of_add_loop(tmp_path):
    """SIGKILL a writer looping over SkillLibrary.add + tag at arbitrary moments, three times; each restart goes on
    from what was committed."""
    path, markers = str(tmp_path / "lib"), tmp_path / "markers"
    markers.mkdir()
    SkillLibrary.open(path, ENC, DIM)
    rng = np.random.default_rng(0)
    sizes = []
    for round_ in range(3):
        n_tags = len(_tags_written(markers))
        proc = _start_writer(path, markers, "loop")
        try:
            _wait_for(proc, lambda: len(_tags_written(markers)) >= n_tags + 2)
            time.sleep(float(rng.uniform(0.0, 0.15)))  # somewhere in a batch, a tag, or between
        finally:
            if proc.poll() is None:
                _kill(proc)
        lib = _check_committed_state(path)
        assert set(_tags_written(markers)) <= set(lib.tags())  # every tag the writer reported exists
        sizes.append(lib.size())
        del lib
    assert sizes == sorted(sizes) and sizes[-1] >= 6 * BATCH


# ---- a pinned reader in this process, a writer in another ---------------------------------------------------
def _concurrent_writer(path: str, rounds: int, started) -> None:
    """Spawned: batches of adds, utility updates over the pinned rows, evictions, tags."""
    lib = SkillLibrary.open(path, ENC, DIM)
    rng = np.random.default_rng(1)
    started.set()
    for r in range(rounds):
        pinned_ids = [s.id for s in lib.all_skills()[:20]]
        lib.update_utilities({sid: [1.0, 0.0] for sid in pinned_ids}, alpha=0.5)
        n = 50
        lib.add([SkillDraft(f"w{r}-{i}", "s") for i in range(n)], rng.normal(size=(n, DIM)).astype(np.float32),
                iteration=r + 1, source_tasks=["t"] * n, source_episodes=["e"] * n, initial_utility=0.3,
                merge_threshold=2.0)
        lib.evict(lib.size() - 5)
        lib.tag(f"w-{r}")


def _view_state(view: SkillLibrary, queries: np.ndarray):
    return (view.version, view.size(), view.size(active_only=False),
            [(s.id, s.utility, s.uses, s.status, tuple(s.parent_ids)) for s in view.all_skills(active_only=False)],
            [[(s.id, round(sim, 6)) for s, sim in hits] for hits in view.search(queries, 5)])


def test_pinned_reads_unaffected_by_writer_in_another_process(tmp_path):
    path = str(tmp_path / "lib")
    lib = SkillLibrary.open(path, ENC, DIM)
    rng = np.random.default_rng(0)
    n = 100
    lib.add([SkillDraft(f"base {i}", "s") for i in range(n)], rng.normal(size=(n, DIM)).astype(np.float32),
            iteration=0, source_tasks=["t"] * n, source_episodes=["e"] * n, initial_utility=0.5, merge_threshold=2.0)
    lib.tag("pin")
    view = lib.checkout("pin")
    queries = rng.normal(size=(8, DIM)).astype(np.float32)
    expected = _view_state(view, queries)

    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    rounds = 12
    proc = ctx.Process(target=_concurrent_writer, args=(path, rounds, started), daemon=True)
    proc.start()
    try:
        assert started.wait(60), "writer did not start"
        checks, head_versions = 0, set()
        while proc.is_alive():
            assert _view_state(view, queries) == expected
            head_versions.add(lib.version)  # the head library in this process follows the writer
            checks += 1
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    assert checks >= 3 and len(head_versions) >= 2, (checks, head_versions)  # the reads overlapped the writes
    assert _view_state(view, queries) == expected
    assert _view_state(lib.checkout("pin"), queries) == expected
    assert set(lib.tags()) == {"pin"} | {f"w-{r}" for r in range(rounds)}
    head = lib.all_skills(active_only=False)
    assert len(head) == n + 50 * rounds and lib.size() < len(head)  # the head moved on: more rows, evictions
    pinned = {s.id for s in view.all_skills()}
    assert any(s.uses > 0 for s in head if s.id in pinned) and all(s.uses == 0 for s in view.all_skills())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
