"""The versioned skill library: the only module that knows LanceDB.

One LanceDB table, one row per skill (retired skills keep their row). Every mutating call is at most one
table write, hence at most one new table version, plus, once the library holds `index_threshold` active
skills, an occasional vector-index (re)build (its own version); `tag`/`checkout`/`restore`/`diff`/`compact`
expose LanceDB's versioning. Read-modify-write calls (add, update_utilities, evict) assume one writer per
table (the library actor). A writer killed mid-write leaves the table at its last committed version
(LanceDB commits a version by writing its manifest last). Never fork a process after LanceDB was used in it
(Rust panic in the child): use spawn or Ray actors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfSq

try:  # LanceDB's background event loop: one round trip per index query (see SkillLibrary._index_hits)
    from lancedb.background_loop import LOOP as _LOOP
except ImportError:  # pragma: no cover - another lancedb layout: the sync query builder is used
    _LOOP = None

from skill1.algo.utility import ema_update, eviction_score
from skill1.types import Skill, SkillDraft

_META_ENCODER, _META_DIM = b"encoder_name", b"dim"


class LibraryEncoderMismatch(RuntimeError):
    """The table on disk was built with a different encoder (name or dimension) than the caller's."""


class LibraryNotFound(FileNotFoundError):
    """`open(..., create=False)` on a directory that holds no skill table."""


@dataclass
class LibraryDiff:
    """What changed between two versions of the library (`SkillLibrary.diff`)."""

    from_version: int
    to_version: int
    added: list[Skill]  # active in `to`, absent in `from`
    retired: list[Skill]  # active in `from`, retired in `to` (as they are in `to`)
    merged: dict[str, list[str]]  # skill id -> parent ids that appeared between the versions
    # (id, u_from, u_to, uses_from, uses_to), only rows whose utility or uses changed, sorted by |u_to-u_from| desc
    utility_changes: list[tuple[str, float, float, int, int]]

    def is_empty(self) -> bool:
        return not (self.added or self.retired or self.merged or self.utility_changes)


@dataclass
class AdmissionReport:
    accepted: list[str] = field(default_factory=list)  # ids of the new rows
    merged: dict[str, str] = field(default_factory=dict)  # new draft id -> surviving skill id
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (draft index, reason)


def skill_schema(encoder_name: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("scenario", pa.string()),
            pa.field("strategy", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("utility", pa.float64()),
            pa.field("uses", pa.int64()),
            pa.field("wins", pa.int64()),
            pa.field("created_iteration", pa.int64()),
            pa.field("source_task", pa.string()),
            pa.field("source_episode", pa.string()),
            pa.field("parent_ids", pa.list_(pa.string())),
            pa.field("status", pa.string()),
        ],
        metadata={_META_ENCODER: encoder_name.encode(), _META_DIM: str(dim).encode()},
    )


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _skill(row: dict) -> Skill:
    """A Skill from a snapshot row without the dataclass __init__ (search builds thousands per batch); it owns
    its parent_ids list, so a caller mutating it cannot reach the cached snapshot."""
    s = object.__new__(Skill)
    s.__dict__.update(row)
    s.parent_ids = list(row["parent_ids"] or [])
    return s


def _read_all(tbl) -> pa.Table:
    """Every row of the table's current version, with LanceDB's `_rowid` (what a vector search returns)."""
    return tbl.search().with_row_id(True).limit(None).to_arrow()


class _Snapshot:
    """All rows of one table version, decoded once: rows (dicts without vector), stored and unit vectors."""

    def __init__(self, table: pa.Table, dim: int, with_vectors: bool = True):
        rowids = None
        if "_rowid" in table.column_names:
            rowids = table.column("_rowid").to_numpy()
            table = table.drop_columns(["_rowid"])
        rows = table.drop_columns(["vector"]).to_pylist()
        perm = sorted(range(len(rows)), key=lambda i: (rows[i]["created_iteration"], rows[i]["id"]))
        self.rows = [rows[i] for i in perm]  # oldest first, then by id: a stable order for every reader
        self._rowids = None if rowids is None else rowids[np.asarray(perm, dtype=np.int64)]
        self._rowid_lookup: tuple[np.ndarray, np.ndarray] | None = None
        self.by_id = {r["id"]: i for i, r in enumerate(self.rows)}
        self.active = np.array([r["status"] == "active" for r in self.rows], dtype=bool)
        self.active_idx = np.flatnonzero(self.active)
        self.stored = self.vectors = None
        if with_vectors:
            flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            self.stored = flat.reshape(-1, dim).astype(np.float32)[np.asarray(perm, dtype=np.int64)]
            norms = np.linalg.norm(self.stored, axis=-1)
            unit_already = len(norms) == 0 or bool(np.all(np.abs(norms - 1.0) < 1e-4))
            self.vectors = self.stored if unit_already else _unit(self.stored)  # rows from `add` are unit already
        self._active_vectors: np.ndarray | None = None

    @property
    def n_active(self) -> int:
        return len(self.active_idx)

    def rows_of(self, rowids: np.ndarray) -> np.ndarray:
        """Snapshot row indices of LanceDB row ids of this version (-1 where unknown)."""
        if self._rowids is None or len(self._rowids) == 0:
            return np.full(len(rowids), -1, dtype=np.int64)
        if self._rowid_lookup is None:
            order = np.argsort(self._rowids, kind="stable")
            self._rowid_lookup = (self._rowids[order], order)
        keys, order = self._rowid_lookup
        pos = np.minimum(np.searchsorted(keys, rowids), len(keys) - 1)
        return np.where(keys[pos] == rowids, order[pos], -1)

    @property
    def active_vectors(self) -> np.ndarray:
        """Unit vectors of the active rows, contiguous (cached: exact search and merge checks reuse it)."""
        if self._active_vectors is None:
            all_active = len(self.active_idx) == len(self.rows)
            self._active_vectors = self.vectors if all_active else np.ascontiguousarray(self.vectors[self.active_idx])
        return self._active_vectors


def _iteration(tag: str) -> int | None:
    """k of the trainer's `iter-k` tags; None for any other name."""
    return int(tag[5:]) if tag.startswith("iter-") and tag[5:].isdigit() else None


class SkillLibrary:
    """A LanceDB-backed skill table; `checkout` gives read-only views pinned at an old version.

    Search: below `index_threshold` active skills, exact numpy cosine over the active rows (cached per table
    version). From `index_threshold` on, the writer keeps a LanceDB IVF_SQ cosine index on the vectors
    (built when the threshold is crossed, rebuilt when more than `index_rebuild_fraction` of the rows are not
    covered; `build_index()` forces one) and single queries and small batches go through it: it fetches
    `index_refine` x top_m candidates, which are re-scored exactly in numpy and filtered to active rows.
    Large batches (>= `index_max_batch` queries) stay on exact numpy, which amortises its scan better.
    A view whose version has no index (pinned before it was built) searches exactly. LanceDB's flat
    (unindexed) search is used only past `exact_search_max_rows`. Every path returns exact cosines.
    """

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

    def __init__(self, db, tbl, path: str, table: str, encoder_name: str, dim: int, read_only: bool = False):
        self._db, self._tbl = db, tbl
        self.path, self.table_name = path, table
        self.encoder_name, self.dim, self.read_only = encoder_name, int(dim), read_only
        self._schema = skill_schema(encoder_name, dim)
        self._snap: tuple[int, _Snapshot] | None = None
        self._index: tuple[int, bool] | None = None  # (version, has a vector index)
        self._pinned_version = int(tbl.version) if read_only else None  # a checkout never moves: no look-ups
        self.last_search_path: str | None = None  # "exact" | "index" | "flat" | None (nothing to search)

    # ---- opening and versions -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str, encoder_name: str, dim: int, table: str = "skills", *,
             create: bool = True) -> SkillLibrary:
        """The library at `path`; `create=False` (readers such as `skill1 library`): a directory without a
        skill table raises `LibraryNotFound` instead of getting an empty table written into it."""
        db = lancedb.connect(path, read_consistency_interval=timedelta(0))  # always see other writers
        try:
            tbl = db.open_table(table)
        except ValueError:  # not found: create it (a racing creator may win; then open theirs)
            if not create:
                raise LibraryNotFound(f"{path} is not a skill library (it holds no table {table!r})") from None
            try:
                tbl = db.create_table(table, schema=skill_schema(encoder_name, dim))
            except ValueError:
                tbl = db.open_table(table)
        meta = tbl.schema.metadata or {}
        stored_name = meta.get(_META_ENCODER, b"<none>").decode()
        stored_dim = meta.get(_META_DIM, b"<none>").decode()
        if stored_name != encoder_name or stored_dim != str(dim):
            raise LibraryEncoderMismatch(
                f"Skill library at {path!r} (table {table!r}) was built with encoder {stored_name!r} "
                f"(dim {stored_dim}), but encoder {encoder_name!r} (dim {dim}) was requested."
            )
        return cls(db, tbl, path, table, encoder_name, dim)

    @property
    def version(self) -> int:
        return self._pinned_version if self._pinned_version is not None else int(self._tbl.version)

    def tag(self, name: str) -> int:
        self._check_writable("tag")
        if name in self.tags():
            raise ValueError(f"Tag {name!r} already exists in the skill library at {self.path!r}.")
        version = self.version
        self._tbl.tags.create(name, version)
        return version

    def tags(self) -> dict[str, int]:
        return {name: int(t["version"]) for name, t in self._tbl.tags.list().items()}

    def _resolve(self, version_or_tag: int | str) -> int:
        if isinstance(version_or_tag, str):
            tags = self.tags()
            if version_or_tag not in tags:
                raise ValueError(f"No tag {version_or_tag!r} in the skill library at {self.path!r}.")
            return tags[version_or_tag]
        versions = {int(v["version"]) for v in self._tbl.list_versions()}
        if int(version_or_tag) not in versions:
            raise ValueError(f"No version {version_or_tag} in the skill library at {self.path!r}.")
        return int(version_or_tag)

    def checkout(self, version_or_tag: int | str) -> SkillLibrary:
        """A read-only view pinned at that version; later writes to the head do not change it."""
        version = self._resolve(version_or_tag)
        tbl = self._db.open_table(self.table_name)
        tbl.checkout(version)
        return SkillLibrary(self._db, tbl, self.path, self.table_name, self.encoder_name, self.dim, read_only=True)

    def restore(self, version_or_tag: int | str) -> int:
        """Make that version's rows the new head (always a new version); returns the new version."""
        self._check_writable("restore")
        self._tbl.restore(self._resolve(version_or_tag))
        version = self.version
        self._maintain_index()
        return version

    def rollback(self, tag: str) -> list[str]:
        """Back to tag `tag` for a resumed run: the tags made after it are deleted (the resumed iterations make
        them again) and, when the head moved since, the tagged rows become the head (a new version, so the
        rolled-back writes stay inspectable by version number until compaction). Returns the deleted tags."""
        self._check_writable("rollback")
        target, tags = self._resolve(tag), self.tags()

        def after(name: str, version: int) -> bool:
            # an iteration that wrote nothing (grpo, no valid skill) tags the same version as the one before:
            # its tag is later by number, not by version, and the resumed iteration makes it again
            if version != target:
                return version > target
            return _iteration(name) is not None and _iteration(tag) is not None and _iteration(name) > _iteration(tag)

        later = sorted((n for n, v in tags.items() if after(n, v)), key=lambda n: (tags[n], _iteration(n) or 0, n))
        for name in later:
            self._tbl.tags.delete(name)
        if self.version != target:
            self.restore(target)
        return later

    def diff(self, a: int | str, b: int | str | None = None) -> LibraryDiff:
        """What changed from version/tag `a` to `b` (None: this view's version, the head for a head library)."""
        va = self._resolve(a)
        vb = self.version if b is None else self._resolve(b)
        sa, sb = self._snapshot_at(va, with_vectors=False), self._snapshot_at(vb, with_vectors=False)
        added, retired, merged, changes = [], [], {}, []
        for r in sb.rows:
            old = sa.rows[sa.by_id[r["id"]]] if r["id"] in sa.by_id else None
            if old is None:
                if r["status"] == "active":
                    added.append(_skill(r))
            else:
                if old["status"] == "active" and r["status"] == "retired":
                    retired.append(_skill(r))
                if old["utility"] != r["utility"] or old["uses"] != r["uses"]:
                    changes.append(
                        (r["id"], float(old["utility"]), float(r["utility"]), int(old["uses"]), int(r["uses"]))
                    )
            before = set(old["parent_ids"] or []) if old is not None else set()
            new_parents = [p for p in (r["parent_ids"] or []) if p not in before]
            if new_parents:
                merged[r["id"]] = new_parents
        changes.sort(key=lambda c: (-abs(c[2] - c[1]), c[0]))
        return LibraryDiff(va, vb, added, retired, merged, changes)

    def export(self, out_path: str, version_or_tag: int | str | None = None, *, active_only: bool = False,
               with_vectors: bool = False) -> int:
        """Write one JSON object per skill (the `Skill` fields, plus "vector" with with_vectors) to out_path,
        oldest first, from this view's version or the given version/tag. Returns the number of rows written."""
        version = self.version if version_or_tag is None else self._resolve(version_or_tag)
        snap = self._snapshot_at(version, with_vectors=with_vectors)
        parent = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(parent, exist_ok=True)
        tmp = f"{out_path}.tmp-{uuid.uuid4().hex[:8]}"
        n = 0
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for i, r in enumerate(snap.rows):
                    if active_only and not snap.active[i]:
                        continue
                    obj = dataclasses.asdict(Skill(**r))
                    if with_vectors:
                        obj["vector"] = snap.stored[i].tolist()
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                    n += 1
            os.replace(tmp, out_path)  # a reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return n

    def compact(self) -> int:
        """Compact the table's files (and fold new rows into the vector index), then delete every untagged
        version older than the head. Tags and the head's contents survive; the head gets a new version
        number when files were compacted. Returns the number of versions removed.

        Readers pinned at an untagged old version lose it: pin tags (as the trainer's iter-<k>) instead.
        Pruning needs pylance (LanceDB 0.40's own prune refuses to run while any old version is tagged);
        without it only the compaction runs, with a warning."""
        self._check_writable("compact")
        before = {int(v["version"]) for v in self._tbl.list_versions()}
        # LanceDB's optimize = compaction + index update + prune; its prune raises as soon as a tagged version
        # is older than the cutoff, so the cutoff is put out of reach and pylance prunes with tags kept.
        self._tbl.optimize(cleanup_older_than=timedelta(days=3650))
        try:
            import lance  # noqa: F401  (pylance)
        except ImportError:
            warnings.warn("SkillLibrary.compact: pylance is not installed, old versions were not removed "
                          "(pip install pylance).", RuntimeWarning, stacklevel=2)
        else:
            self._tbl.to_lance().cleanup_old_versions(older_than=timedelta(0), error_if_tagged_old_versions=False)
        self._tbl.checkout_latest()
        after = {int(v["version"]) for v in self._tbl.list_versions()}
        return len(before - after)

    # ---- reads --------------------------------------------------------------------------------
    def _snapshot(self, version: int | None = None) -> _Snapshot:
        version = self.version if version is None else version
        if self._snap is None or self._snap[0] != version:
            self._snap = (version, _Snapshot(_read_all(self._tbl), self.dim))
        return self._snap[1]

    def _snapshot_at(self, version: int, with_vectors: bool = True) -> _Snapshot:
        if version == self.version:
            return self._snapshot()
        tbl = self._db.open_table(self.table_name)
        tbl.checkout(version)
        return _Snapshot(_read_all(tbl), self.dim, with_vectors=with_vectors)

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

    def size(self, active_only: bool = True) -> int:
        snap = self._snapshot()
        return int(snap.active.sum()) if active_only else len(snap.rows)

    def all_skills(self, active_only: bool = True) -> list[Skill]:
        snap = self._snapshot()
        return [_skill(r) for r, a in zip(snap.rows, snap.active) if a or not active_only]

    def get(self, ids: list[str]) -> list[Skill]:
        snap = self._snapshot()
        missing = [i for i in ids if i not in snap.by_id]
        if missing:
            raise KeyError(f"Unknown skill ids: {missing}")
        return [_skill(snap.rows[snap.by_id[i]]) for i in ids]

    def search(self, query_embeddings: np.ndarray, top_m: int) -> list[list[tuple[Skill, float]]]:
        """Top-m active skills by cosine for each query row, best first, with the cosine in [-1, 1]."""
        queries = _unit(np.asarray(query_embeddings, dtype=np.float32).reshape(-1, self.dim))
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

    def _exact_search(self, queries: np.ndarray, top_m: int, snap: _Snapshot) -> list[list[tuple[Skill, float]]]:
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
        return [[(_skill(snap.rows[j]), c) for j, c in zip(rr, cc)] for rr, cc in zip(rows, best_sims)]

    def _index_search(self, queries: np.ndarray, top_m: int, snap: _Snapshot) -> list[list[tuple[Skill, float]]]:
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
            out.append([(_skill(snap.rows[j]), c) for j, c in pairs])
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

    def _lance_search(self, queries: np.ndarray, top_m: int, snap: _Snapshot) -> list[list[tuple[Skill, float]]]:
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
            out[q].append((_skill(snap.rows[snap.by_id[sid]]), float(np.clip(1.0 - dist, -1.0, 1.0))))
        return [sorted(hs, key=lambda h: -h[1]) for hs in out]

    # ---- writes -------------------------------------------------------------------------------
    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise PermissionError(
                f"Cannot {what}: this skill library view is pinned at version {self.version} and is read-only; "
                f"write to the head library instead."
            )

    def _upsert(self, rows: list[dict], snap: _Snapshot) -> None:
        """One table write (one new version) for new and changed rows; nothing to write, no version."""
        if not rows:
            return
        for r in rows:
            if "vector" not in r:
                r["vector"] = snap.stored[snap.by_id[r["id"]]].tolist()
        data = pa.Table.from_pylist(rows, schema=self._schema)
        self._tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        self._maintain_index()

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

    def add(
        self,
        drafts: list[SkillDraft],
        embeddings: np.ndarray,
        *,
        iteration: int,
        source_tasks: list[str],
        source_episodes: list[str],
        initial_utility: float | None,
        merge_threshold: float = 0.95,
        max_chars: int = 2000,
    ) -> AdmissionReport:
        """Admit drafts: reject empty or too long ones (scenario + strategy > max_chars), merge near-duplicates
        (cosine >= merge_threshold to an active skill or an earlier draft of this call) into the survivor's
        parent_ids, insert the rest. One table write at most."""
        self._check_writable("add")
        emb = np.asarray(embeddings, dtype=np.float32)
        n = len(drafts)
        if emb.shape != (n, self.dim) or len(source_tasks) != n or len(source_episodes) != n:
            raise ValueError(
                f"add: {len(drafts)} drafts need embeddings of shape ({len(drafts)}, {self.dim}) (got {emb.shape}) "
                f"and as many source_tasks ({len(source_tasks)}) and source_episodes ({len(source_episodes)})."
            )
        snap = self._snapshot()
        active = snap.active_idx
        if initial_utility is None:
            initial_utility = float(np.mean([snap.rows[i]["utility"] for i in active])) if len(active) else 0.0
        if not np.isfinite(initial_utility):  # a NaN utility would rank, evict and checkpoint as garbage
            raise ValueError(f"add: initial utility must be finite, got {initial_utility}")
        reasons: list[str | None] = []
        for i, draft in enumerate(drafts):
            scenario, strategy = (draft.scenario or "").strip(), (draft.strategy or "").strip()
            reasons.append(
                "empty_scenario" if not scenario
                else "empty_strategy" if not strategy
                else "too_long" if len(scenario) + len(strategy) > max_chars
                else "bad_embedding" if not (np.all(np.isfinite(emb[i])) and np.linalg.norm(emb[i]) > 0)
                else None
            )  # fmt: skip
        ok = [i for i, r in enumerate(reasons) if r is None]
        vecs = _unit(emb[ok]) if ok else np.zeros((0, self.dim), dtype=np.float32)
        # best match among the active skills for every admissible draft, in chunks (bounded memory)
        best_act = np.full(len(ok), -np.inf, dtype=np.float32)
        best_act_idx = np.zeros(len(ok), dtype=np.int64)
        if len(active) and len(ok):
            act = snap.active_vectors
            step = max(1, 2_000_000 // len(active))
            for c in range(0, len(ok), step):
                sims = vecs[c : c + step] @ act.T
                best_act_idx[c : c + step] = np.argmax(sims, axis=1)
                best_act[c : c + step] = sims[np.arange(len(sims)), best_act_idx[c : c + step]]
        new_vecs = np.zeros((len(ok), self.dim), dtype=np.float32)  # drafts accepted so far in this call
        new_ids: list[str] = []
        known_ids = set(snap.by_id)
        new_rows: dict[str, dict] = {}
        changed: dict[str, dict] = {}  # existing rows whose parent_ids grew
        report = AdmissionReport()
        pos = {i: p for p, i in enumerate(ok)}
        for i, draft in enumerate(drafts):
            if reasons[i]:
                report.rejected.append((i, reasons[i]))
                continue
            new_id = uuid.uuid4().hex[:12]
            while new_id in known_ids:
                new_id = uuid.uuid4().hex[:12]
            known_ids.add(new_id)
            p = pos[i]
            vec = vecs[p]
            survivor, best = None, -np.inf
            if len(active):  # ties go to the existing skill
                survivor, best = snap.rows[active[best_act_idx[p]]]["id"], float(best_act[p])
            if new_ids:
                sims_new = new_vecs[: len(new_ids)] @ vec
                j = int(np.argmax(sims_new))
                if sims_new[j] > best:
                    survivor, best = new_ids[j], float(sims_new[j])
            if survivor is not None and best >= merge_threshold:
                row = new_rows.get(survivor) or changed.setdefault(survivor, dict(snap.rows[snap.by_id[survivor]]))
                row["parent_ids"] = list(row["parent_ids"] or []) + [new_id]
                report.merged[new_id] = survivor
                continue
            scenario, strategy = draft.scenario.strip(), draft.strategy.strip()
            new_rows[new_id] = dict(
                id=new_id, scenario=scenario, strategy=strategy, vector=vec.tolist(), utility=float(initial_utility),
                uses=0, wins=0, created_iteration=int(iteration), source_task=str(source_tasks[i]),
                source_episode=str(source_episodes[i]), parent_ids=[], status="active",
            )  # fmt: skip
            report.accepted.append(new_id)
            new_vecs[len(new_ids)] = vec
            new_ids.append(new_id)
        self._upsert(list(changed.values()) + list(new_rows.values()), snap)
        return report

    def update_utilities(self, outcomes: dict[str, list[float]], alpha: float) -> int:
        """EMA each skill's utility over its outcomes in order; uses += len, wins += count(r >= 1). One write."""
        self._check_writable("update utilities")
        if not 0 < alpha <= 1:  # also False for NaN
            raise ValueError(f"update_utilities: alpha must be in (0, 1], got {alpha}")
        snap = self._snapshot()
        missing = [sid for sid in outcomes if sid not in snap.by_id]
        if missing:
            raise KeyError(f"Unknown skill ids: {missing}")
        rows = []
        for sid, rs in outcomes.items():
            if not rs:
                continue
            row = dict(snap.rows[snap.by_id[sid]])
            row["utility"] = ema_update(row["utility"], rs, alpha)
            if not np.isfinite(row["utility"]):  # checked before the one write: nothing of the call lands
                raise ValueError(f"update_utilities: skill {sid}: outcomes {list(rs)} give a non-finite utility "
                                 f"({row['utility']}); refused")
            row["uses"] += len(rs)
            row["wins"] += sum(1 for r in rs if r >= 1.0)
            rows.append(row)
        self._upsert(rows, snap)
        return len(rows)

    def evict(self, capacity: int) -> list[str]:
        """Retire the lowest u * log(n + 1) active skills (ties: oldest, then id) down to capacity. One write."""
        self._check_writable("evict")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        snap = self._snapshot()
        active = [snap.rows[i] for i in snap.active_idx]
        excess = len(active) - capacity
        if excess <= 0:
            return []
        order = sorted(active, key=lambda r: (eviction_score(r["utility"], r["uses"]), r["created_iteration"], r["id"]))
        rows = [dict(r, status="retired") for r in order[:excess]]
        self._upsert(rows, snap)
        return [r["id"] for r in rows]
