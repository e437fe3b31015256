"""How the skill library answers a query: exact numpy cosine, its LanceDB vector index, or LanceDB's flat search.

Below `index_threshold` active skills, exact numpy cosine over the active rows (cached per table
version). From `index_threshold` on, the writer keeps a LanceDB IVF_SQ cosine index on the vectors
(built when the threshold is crossed, rebuilt when more than `index_rebuild_fraction` of the rows are not
covered; `build_index()` forces one) and single queries and small batches go through it: it fetches
`index_refine` x top_m candidates, which are re-scored exactly in numpy and filtered to active rows.
Large batches (>= `index_max_batch` queries) stay on exact numpy, which amortises its scan better.
A view whose version has no index (pinned before it was built) searches exactly. LanceDB's flat
(unindexed) search is used only past `exact_search_max_rows`. Every path returns exact cosines.

"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from lancedb.index import IvfSq

from skill1.algo.skill_intake import unit
from skill1.library.snapshot import Snapshot, skill_of
from skill1.types import Skill

try:  # LanceDB's background event loop: one round trip per index query (see SkillSearch._index_hits)
    from lancedb.background_loop import LOOP as _LOOP
except ImportError:  # pragma: no cover - another lancedb layout: the sync query builder is used
    _LOOP = None


class SkillSearch:
    """The search half of `SkillLibrary` (a mixin over its table `_tbl`, snapshots and version)."""


    exact_search_max_rows = 1_000_000  # beyond: LanceDB flat search (≈ 25x slower than numpy at 100k rows)
    # ANN index. bench/library_bench.py (2-core CPU, dim 384, random unit vectors, one query at a time): the
    # IVF_SQ path takes ≈ 1.3 / 2.1 / 3.1-4.1 ms at 10k / 50k / 100k rows; numpy brute force ≈ 0.1 / 1.5 / 2.5-3.2
    # with two BLAS threads but ≈ 0.2 / 2.3 / 4.6 ms with the single BLAS thread of the rollout worker (a
    # num_cpus=0.25 Ray actor), where retrieval runs: from 50k on the index is the faster path there.
    index_threshold = 50_000
    index_rebuild_fraction = 0.1  # rebuild when unindexed rows > this fraction of indexed rows
    index_partitions: int | None = None  # IVF partitions; None = LanceDB's default for the row count
    index_nprobes = 4096  # partitions probed per query (capped at the count): all, for recall@3 >= 0.95 on
    # unclustered vectors; lower it for clustered embeddings to trade recall for latency
    index_refine = 2  # candidates fetched per wanted hit, then re-scored exactly
    index_max_batch = 64  # batches at least this large use exact numpy (faster per query at 100k)
    index_postfilter_max_retired = 512  # up to this many retired rows: over-fetch; beyond: LanceDB prefilter

    def _vector_index(self):
        """This version's index on "vector" (LanceDB IndexConfig), or None."""
        for idx in self._tbl.list_indices():
            if list(idx.columns) == ["vector"]:
                return idx
        return None

    def has_index(self, version: int | None = None) -> bool:
        """Whether this view's version carries a vector index (cached per version)."""
        version = self.version if version is None else version
        if self._index is None or self._index[0] != version:
            self._index = (version, self._vector_index() is not None)
        return self._index[1]

    def search(self, query_embeddings: np.ndarray, top_m: int) -> list[list[tuple[Skill, float]]]:
        """Top-m active skills by cosine for each query row, best first, with the cosine in [-1, 1]."""
        queries = unit(np.asarray(query_embeddings, dtype=np.float32).reshape(-1, self.dim))
        version = self.version  # one look-up per call (the head re-checks the table's latest version)
        snap = self._snapshot(version)
        if snap.n_active == 0 or top_m <= 0 or len(queries) == 0:
            self.last_search_path = None
            return [[] for _ in range(len(queries))]
        if snap.n_active >= self.index_threshold and len(queries) < self.index_max_batch and self.has_index(version):
            self.last_search_path = "index"
            return self._index_search(queries, top_m, snap)
        if snap.n_active > self.exact_search_max_rows:
            self.last_search_path = "flat"
            return self._lance_search(queries, top_m, snap)
        self.last_search_path = "exact"
        return self._exact_search(queries, top_m, snap)

    def _exact_search(self, queries: np.ndarray, top_m: int, snap: Snapshot) -> list[list[tuple[Skill, float]]]:
        active, k = snap.active_idx, min(top_m, snap.n_active)
        sims = queries @ snap.active_vectors.T
        if k < len(active) and len(active) > 256:  # partial selection, then order the few (stable on ties)
            cand = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            cand.sort(axis=1)
            order = np.take_along_axis(cand, np.argsort(-np.take_along_axis(sims, cand, 1), 1, kind="stable"), 1)
        else:
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best_sims = np.clip(np.take_along_axis(sims, order, 1), -1.0, 1.0).tolist()
        rows = active[order].tolist()
        return [[(skill_of(snap.rows[j]), c) for j, c in zip(rr, cc)] for rr, cc in zip(rows, best_sims)]

    def _index_search(self, queries: np.ndarray, top_m: int, snap: Snapshot) -> list[list[tuple[Skill, float]]]:
        """ANN candidates from the vector index, re-scored exactly; queries it leaves short fall back to exact."""
        n_retired = len(snap.rows) - snap.n_active
        fetch = top_m * max(1, self.index_refine)
        if n_retired <= self.index_postfilter_max_retired:
            hits = self._index_hits(queries, fetch + n_retired, prefilter=False)  # top_m survive any retired
        else:
            hits = self._index_hits(queries, fetch, prefilter=True)
        qidx = (hits.column("query_index").to_numpy() if "query_index" in hits.column_names
                else np.zeros(hits.num_rows, dtype=np.int64))  # fmt: skip
        rows = snap.rows_of(hits.column("_rowid").to_numpy())
        keep = rows >= 0
        keep[keep] = snap.active[rows[keep]]  # retired rows never come back
        qidx, rows = qidx[keep], rows[keep]
        k = min(top_m, snap.n_active)
        out, short = [], []
        for q in range(len(queries)):
            idx = np.unique(rows[qidx == q]) if len(queries) > 1 else np.unique(rows)
            sims = snap.vectors[idx] @ queries[q]
            best = np.argsort(-sims, kind="stable")[:top_m]
            pairs = zip(idx[best].tolist(), np.clip(sims[best], -1.0, 1.0).tolist())
            out.append([(skill_of(snap.rows[j]), c) for j, c in pairs])
            if len(best) < k:
                short.append(q)
        if short:
            for q, res in zip(short, self._exact_search(queries[short], top_m, snap)):
                out[q] = res
        return out

    def _index_hits(self, queries: np.ndarray, limit: int, prefilter: bool) -> pa.Table:
        """Row ids (and approximate distances) of the index's nearest rows: no data columns are read. One round
        trip to LanceDB's event loop through its async query API (the sync builder makes six, ≈ 0.6 ms/query)."""
        vec = queries[0] if len(queries) == 1 else list(queries)
        atbl = getattr(self._tbl, "_table", None)
        if _LOOP is not None and atbl is not None and hasattr(atbl, "query"):
            q = (atbl.query().nearest_to(vec).column("vector").distance_type("cosine").nprobes(self.index_nprobes)
                 .with_row_id().select(["_distance"]).limit(limit))  # fmt: skip
            if prefilter:
                q = q.where("status = 'active'")
            return _LOOP.run(q.to_arrow())
        b = (self._tbl.search(vec, vector_column_name="vector").distance_type("cosine").nprobes(self.index_nprobes)
             .with_row_id(True).select(["_distance"]).limit(limit))  # fmt: skip
        if prefilter:
            b = b.where("status = 'active'", prefilter=True)
        return b.to_arrow()

    def _lance_search(self, queries: np.ndarray, top_m: int, snap: Snapshot) -> list[list[tuple[Skill, float]]]:
        hits = (
            self._tbl.search(queries[0] if len(queries) == 1 else list(queries), vector_column_name="vector")
            .distance_type("cosine")
            .bypass_vector_index()
            .where("status = 'active'", prefilter=True)
            .select(["id", "_distance"])
            .limit(top_m)
            .to_arrow()
        )
        qidx = hits.column("query_index").to_pylist() if "query_index" in hits.column_names else [0] * hits.num_rows
        out: list[list[tuple[Skill, float]]] = [[] for _ in range(len(queries))]
        for q, sid, dist in zip(qidx, hits.column("id").to_pylist(), hits.column("_distance").to_pylist()):
            out[q].append((skill_of(snap.rows[snap.by_id[sid]]), float(np.clip(1.0 - dist, -1.0, 1.0))))
        return [sorted(hs, key=lambda h: -h[1]) for hs in out]

    def _maintain_index(self) -> bool:
        """Writer side: build the vector index once `index_threshold` active skills exist, rebuild it when
        more than `index_rebuild_fraction` of the rows are not covered. Returns whether it (re)built."""
        if self._tbl.count_rows("status = 'active'") < self.index_threshold:
            return False
        idx = self._vector_index()
        if idx is not None:
            indexed, unindexed = idx.num_indexed_rows, idx.num_unindexed_rows
            if indexed is None or unindexed is None:
                stats = self._tbl.index_stats(idx.name)
                indexed, unindexed = stats.num_indexed_rows, stats.num_unindexed_rows
            if unindexed <= self.index_rebuild_fraction * max(indexed, 1):
                return False
        self.build_index()
        return True

    def build_index(self) -> int:
        """(Re)build the IVF_SQ cosine index over all rows now (one new version); returns the version."""
        self._check_writable("build the index")
        self._tbl.create_index(
            "vector", config=IvfSq(distance_type="cosine", num_partitions=self.index_partitions), replace=True
        )
        return self.version
