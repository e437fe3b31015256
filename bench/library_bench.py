"""Skill-library benchmark: retrieval latency, recall of the ANN index, snapshot (tag) cost, batched updates.

    python bench/library_bench.py [--sizes 1000,10000,50000,100000] [--queries 200] [--batches 20]

For each size N: N random unit vectors (dim 384, seeded) in a temporary LanceDB library. The rows are written
straight through the store's schema in one table write (`SkillLibrary.add` runs the admission/merge check per
draft, which is not what is measured here); the vector index is then built the way the writer builds it.
Measured in this one run, on the same vectors and queries:
  * `SkillLibrary.search` (top_m = 16, the config default): p50/p99 for single queries and for batches of 128,
    and which path served them (exact numpy below `index_threshold`, the IVF_SQ index above it; large batches
    stay exact); "index (forced)" / "exact (forced)" rows force one path for every query and batch;
  * exact brute force with numpy and with torch (cosine = dot of unit vectors, top-16), and the ratios;
  * recall@3 of the library's results against exact search (1.000 on the exact path by construction);
  * tag() cost (the per-iteration snapshot), one `update_utilities` over 1,000 skills (time, versions added),
    and compact() after the tags and the update.
Prints one table (plus a small table of the write-side costs). Takes about 1 minute on a 2-core CPU.

The heap is frozen (gc.freeze) after each setup: with torch and LanceDB imported the process holds ~300k
objects, and the interpreter's full collections of them (~120 ms, triggered by the Skill objects that every
search allocates) would otherwise decide every p99. Long-running samplers can do the same after start-up.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pyarrow as pa
import torch

try:  # single-threaded BLAS, as in a Ray actor with num_cpus=1 (OMP_NUM_THREADS=1)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from skill1.library.store import SkillLibrary, skill_schema  # noqa: E402

DIM, TOP_M, BATCH = 384, 16, 128
ENC = "bench-random-384"


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows_table(x: np.ndarray) -> pa.Table:
    n = len(x)
    return pa.table(
        {
            "id": [f"{i:012x}" for i in range(n)],
            "scenario": [f"scenario {i}" for i in range(n)],
            "strategy": [f"strategy {i}" for i in range(n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
            "utility": np.zeros(n),
            "uses": np.zeros(n, dtype=np.int64),
            "wins": np.zeros(n, dtype=np.int64),
            "created_iteration": np.zeros(n, dtype=np.int64),
            "source_task": ["t"] * n,
            "source_episode": ["e"] * n,
            "parent_ids": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
            "status": ["active"] * n,
        },
        schema=skill_schema(ENC, DIM),
    )


def timed(fn, reps):
    out = []
    for r in reps:
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return np.asarray(out) * 1e3  # ms


def pct(ms: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def numpy_topk(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    sims = q @ x.T
    cand = np.argpartition(-sims, TOP_M - 1, axis=1)[:, :TOP_M]
    return np.take_along_axis(cand, np.argsort(-np.take_along_axis(sims, cand, 1), 1), 1)


def torch_topk(xt: torch.Tensor, q: np.ndarray) -> torch.Tensor:
    return torch.topk(torch.from_numpy(q) @ xt.T, TOP_M, dim=1).indices


def top3(results) -> list[set[int]]:
    """Row numbers of the first three hits per query (only these are kept: holding every returned Skill would
    grow the heap and make the interpreter's full garbage collections, not the search, set the p99)."""
    return [{int(s.id, 16) for s, _ in hits[:3]} for hits in results]


def recall_at_3(got: list[set[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(g & set(e[:3].tolist())) / 3 for g, e in zip(got, exact)]))


def bench_size(n: int, n_queries: int, n_batches: int, seed: int, root: str) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n)
    queries = unit_rows(rng, n_queries)
    batches = [unit_rows(rng, BATCH) for _ in range(n_batches)]
    exact = numpy_topk(x, queries)
    exact_b = [numpy_topk(x, b) for b in batches]
    path = os.path.join(root, f"lib-{n}")
    lib = SkillLibrary.open(path, ENC, DIM)
    t0 = time.perf_counter()
    lib._tbl.add(rows_table(x))  # one write through the store's schema (see the module docstring)
    write_s = time.perf_counter() - t0
    build_s = None
    if n >= lib.index_threshold:
        t0 = time.perf_counter()
        lib.build_index()
        build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lib.search(queries[:1], TOP_M)  # decodes this version's snapshot once (cached per version)
    snapshot_s = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # see the module docstring: keeps full collections of the start-up heap out of the p99s

    def lib_rows(label: str) -> dict:
        res_single, paths = [], set()

        def one(q):
            res_single.extend(top3(lib.search(q[None], TOP_M)))
            paths.add(lib.last_search_path)

        single = timed(one, queries)
        single_paths = "/".join(sorted(paths))
        res_batch, paths = [], set()

        def many(b):
            res_batch.append(top3(lib.search(b, TOP_M)))
            paths.add(lib.last_search_path)

        batch = timed(many, batches)
        rec = recall_at_3(res_single, exact)
        rec_b = float(np.mean([recall_at_3(r, e) for r, e in zip(res_batch, exact_b)]))
        return dict(n=n, label=label, single_path=single_paths, batch_path="/".join(sorted(paths)),
                    single=pct(single), batch=pct(batch), recall=rec, recall_b=rec_b)

    rows = [lib_rows("SkillLibrary.search")]
    if n >= 10_000:  # each path on every query and batch, for comparison at this size
        if not lib.has_index():
            lib.build_index()
            lib.search(queries[:1], TOP_M)
        saved = (lib.index_threshold, lib.index_max_batch)
        lib.index_threshold, lib.index_max_batch = 0, 1 << 30
        rows.append(lib_rows("index (forced)"))
        if rows[0]["single_path"] == "index":
            lib.index_threshold = 1 << 60
            rows.append(lib_rows("exact (forced)"))
        lib.index_threshold, lib.index_max_batch = saved

    # brute force on the same vectors, same queries (after the library, so that spinning BLAS/OpenMP threads
    # left over from these runs do not slow the library's measurements)
    xt = torch.from_numpy(x)
    np_single = timed(lambda q: numpy_topk(x, q[None]), queries)
    np_batch = timed(lambda b: numpy_topk(x, b), batches)
    np1_single = np1_batch = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1):
            np1_single = timed(lambda q: numpy_topk(x, q[None]), queries)
            np1_batch = timed(lambda b: numpy_topk(x, b), batches)
    torch_single = timed(lambda q: torch_topk(xt, q[None]), queries)
    torch_batch = timed(lambda b: torch_topk(xt, b), batches)
    for r in rows:
        r.update(np_single=pct(np_single), np_batch=pct(np_batch), torch_single=pct(torch_single),
                 torch_batch=pct(torch_batch), np1_single=pct(np1_single) if np1_single is not None else None,
                 np1_batch=pct(np1_batch) if np1_batch is not None else None)

    # write side: tag cost, one batched utility update, compaction
    tag_ms = timed(lambda i: lib.tag(f"bench-{i}"), range(20))
    ids = [f"{i:012x}" for i in rng.choice(n, size=min(1000, n), replace=False)]
    outcomes = {sid: [float(rng.random() < 0.5)] for sid in ids}
    v0, n_versions0 = lib.version, len(lib._tbl.list_versions())
    t0 = time.perf_counter()
    updated = lib.update_utilities(outcomes, alpha=0.1)
    update_s = time.perf_counter() - t0
    new_versions = (lib.version - v0, len(lib._tbl.list_versions()) - n_versions0)
    lib.tag("after-update")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        removed = lib.compact()
        compact_s = time.perf_counter() - t0
    assert lib.size() == n and lib.checkout("bench-0").size() == n
    writes = dict(n=n, write_s=write_s, build_s=build_s, snapshot_s=snapshot_s, tag=pct(tag_ms), updated=updated,
                  update_s=update_s, new_versions=new_versions, compact_s=compact_s, removed=removed)
    del lib
    gc.unfreeze()
    shutil.rmtree(path, ignore_errors=True)
    return rows, writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="library-bench-")
    all_rows, all_writes = [], []
    try:
        for n in sizes:
            rows, writes = bench_size(n, args.queries, args.batches, args.seed + n, root)
            all_rows += rows
            all_writes.append(writes)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nSkill library bench: dim {DIM}, top_m {TOP_M}, {args.queries} single queries, {args.batches} batches "
          f"of {BATCH}; random unit vectors (seeded); torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"SkillLibrary.index_threshold = {SkillLibrary.index_threshold:,} active skills, IVF_SQ cosine, "
          f"nprobes {SkillLibrary.index_nprobes} (all partitions), {SkillLibrary.index_refine}x candidates re-scored "
          f"exactly; batches >= {SkillLibrary.index_max_batch} queries stay exact")
    print("Rows were written straight through the store's schema in one table write (not SkillLibrary.add).\n")
    hdr = (f"{'N':>7} {'library path':<20} {'single p50/p99 ms':>18} {'batch128 p50/p99 ms':>20} "
           f"{'numpy 1 / 128':>15} {'numpy-1t 1 / 128':>16} {'torch 1 / 128':>15} {'lib/numpy 1':>11} "
           f"{'lib/numpy-1t 1':>14} {'lib/numpy 128':>13} {'lib/torch 1':>11} {'recall@3 1/128':>15}")
    print(hdr)
    print("-" * len(hdr))
    for r in all_rows:
        path = r["single_path"] if r["label"] == "SkillLibrary.search" else r["label"]
        if r["batch_path"] != r["single_path"]:
            path += f"/{r['batch_path']}(b)"
        np1 = f"{r['np1_single'][0]:.2f} /{r['np1_batch'][0]:>6.1f}" if r["np1_single"] else "-"
        np1_ratio = f"{r['single'][0] / r['np1_single'][0]:.2f}x" if r["np1_single"] else "-"
        print(f"{r['n']:>7,} {path:<20} {r['single'][0]:>8.2f} /{r['single'][1]:>8.2f} "
              f"{r['batch'][0]:>9.1f} /{r['batch'][1]:>9.1f} "
              f"{r['np_single'][0]:>6.2f} /{r['np_batch'][0]:>6.1f} {np1:>16} "
              f"{r['torch_single'][0]:>6.2f} /{r['torch_batch'][0]:>6.1f} "
              f"{r['single'][0] / r['np_single'][0]:>10.2f}x {np1_ratio:>14} "
              f"{r['batch'][0] / r['np_batch'][0]:>12.2f}x "
              f"{r['single'][0] / r['torch_single'][0]:>10.2f}x {r['recall']:>7.3f}/{r['recall_b']:.3f}")
    print("\n(numpy/torch columns: exact brute-force p50 ms for 1 query / a batch of 128; numpy-1t: one BLAS thread, "
          "as in a num_cpus=1 Ray actor; ratios are p50 over p50; path: the library's path for single queries, "
          "(b) for batches)\n")
    hdr2 = (f"{'N':>7} {'rows write s':>12} {'index build s':>13} {'snapshot decode s':>17} {'tag p50/p99 ms':>15} "
            f"{'update 1k skills':>16} {'versions added':>14} {'compact s':>9} {'versions removed':>16}")
    print(hdr2)
    print("-" * len(hdr2))
    for w in all_writes:
        build = f"{w['build_s']:.2f}" if w["build_s"] is not None else "-"
        nv = w["new_versions"]
        print(f"{w['n']:>7,} {w['write_s']:>12.2f} {build:>13} {w['snapshot_s']:>17.2f} "
              f"{w['tag'][0]:>7.2f}/{w['tag'][1]:>6.2f} {w['update_s'] * 1e3:>11.0f} ms {nv[0]:>14} "
              f"{w['compact_s']:>9.2f} {w['removed']:>16}")
        assert nv[0] == 1 and nv[1] == 1, f"update_utilities of {w['updated']} skills made {nv} versions, expected 1"
    if len(all_writes) >= 2:
        lo, hi = all_writes[0], all_writes[-1]
        print(f"\ntag() p50 at {hi['n']:,} vs {lo['n']:,} skills: {hi['tag'][0] / lo['tag'][0]:.2f}x "
              f"({hi['tag'][0]:.2f} ms vs {lo['tag'][0]:.2f} ms): a tag is a pointer to a version, not a copy")
    ok = [r for r in all_rows if r["n"] >= 100_000 and r["label"] == "SkillLibrary.search"]
    for r in ok:
        print(f"goal p50 single query < 5 ms at {r['n']:,}: {r['single'][0]:.2f} ms "
              f"({'met' if r['single'][0] < 5 else 'NOT met'}), path {r['single_path']}, recall@3 {r['recall']:.3f}")
    print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
