"""The versioned skill library: the only module that knows LanceDB.

One LanceDB table, one row per skill (retired skills keep their row). Every mutating call is at most one
table write, hence at most one new table version; `tag`/`checkout`/`restore` expose LanceDB's versioning.
Read-modify-write calls (add, update_utilities, evict) assume one writer per table (the library actor).
Never fork a process after LanceDB was used in it (Rust panic in the child): use spawn or Ray actors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa

from skill1.algo.utility import ema_update, eviction_score
from skill1.types import Skill, SkillDraft

_META_ENCODER, _META_DIM = b"encoder_name", b"dim"


class LibraryEncoderMismatch(RuntimeError):
    """The table on disk was built with a different encoder (name or dimension) than the caller's."""


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


class _Snapshot:
    """All rows of one table version, decoded once: rows (dicts without vector), stored and unit vectors."""

    def __init__(self, table: pa.Table, dim: int):
        rows = table.drop_columns(["vector"]).to_pylist()
        perm = sorted(range(len(rows)), key=lambda i: (rows[i]["created_iteration"], rows[i]["id"]))
        self.rows = [rows[i] for i in perm]  # oldest first, then by id: a stable order for every reader
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.stored = flat.reshape(-1, dim).astype(np.float32)[np.asarray(perm, dtype=np.int64)]
        self.vectors = _unit(self.stored)
        self.by_id = {r["id"]: i for i, r in enumerate(self.rows)}
        self.active = np.array([r["status"] == "active" for r in self.rows], dtype=bool)


class SkillLibrary:
    """A LanceDB-backed skill table; `checkout` gives read-only views pinned at an old version.

    Search is exact: numpy cosine over the active rows (cached per table version) up to
    `exact_search_max_rows` active skills, LanceDB's flat cosine vector search (no index) beyond;
    both give the same results up to the order of ties.
    """

    exact_search_max_rows = 50_000

    def __init__(self, db, tbl, path: str, table: str, encoder_name: str, dim: int, read_only: bool = False):
        self._db, self._tbl = db, tbl
        self.path, self.table_name = path, table
        self.encoder_name, self.dim, self.read_only = encoder_name, int(dim), read_only
        self._schema = skill_schema(encoder_name, dim)
        self._snap: tuple[int, _Snapshot] | None = None

    # ---- opening and versions -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str, encoder_name: str, dim: int, table: str = "skills") -> SkillLibrary:
        db = lancedb.connect(path, read_consistency_interval=timedelta(0))  # always see other writers
        try:
            tbl = db.open_table(table)
        except ValueError:  # not found: create it (a racing creator may win; then open theirs)
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
        return int(self._tbl.version)

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
        return self.version

    # ---- reads --------------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        version = self.version
        if self._snap is None or self._snap[0] != version:
            self._snap = (version, _Snapshot(self._tbl.to_arrow(), self.dim))
        return self._snap[1]

    def size(self, active_only: bool = True) -> int:
        snap = self._snapshot()
        return int(snap.active.sum()) if active_only else len(snap.rows)

    def all_skills(self, active_only: bool = True) -> list[Skill]:
        snap = self._snapshot()
        return [Skill(**r) for r, a in zip(snap.rows, snap.active) if a or not active_only]

    def get(self, ids: list[str]) -> list[Skill]:
        snap = self._snapshot()
        missing = [i for i in ids if i not in snap.by_id]
        if missing:
            raise KeyError(f"Unknown skill ids: {missing}")
        return [Skill(**snap.rows[snap.by_id[i]]) for i in ids]

    def search(self, query_embeddings: np.ndarray, top_m: int) -> list[list[tuple[Skill, float]]]:
        """Top-m active skills by cosine for each query row, best first, with the cosine in [-1, 1]."""
        queries = _unit(np.asarray(query_embeddings, dtype=np.float32).reshape(-1, self.dim))
        snap = self._snapshot()
        active = np.flatnonzero(snap.active)
        if len(active) == 0 or top_m <= 0:
            return [[] for _ in range(len(queries))]
        if len(active) > self.exact_search_max_rows:
            return self._lance_search(queries, top_m, snap)
        sims = queries @ snap.vectors[active].T
        out = []
        for row in sims:
            best = np.argsort(-row, kind="stable")[:top_m]
            out.append([(Skill(**snap.rows[active[j]]), float(np.clip(row[j], -1.0, 1.0))) for j in best])
        return out

    def _lance_search(self, queries: np.ndarray, top_m: int, snap: _Snapshot) -> list[list[tuple[Skill, float]]]:
        hits = (
            self._tbl.search(queries)
            .metric("cosine")
            .where("status = 'active'", prefilter=True)
            .select(["id"])
            .limit(top_m)
            .to_arrow()
        )
        qidx = hits.column("query_index").to_pylist() if "query_index" in hits.column_names else [0] * hits.num_rows
        out: list[list[tuple[Skill, float]]] = [[] for _ in range(len(queries))]
        for q, sid, dist in zip(qidx, hits.column("id").to_pylist(), hits.column("_distance").to_pylist()):
            out[q].append((Skill(**snap.rows[snap.by_id[sid]]), float(np.clip(1.0 - dist, -1.0, 1.0))))
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
        active = np.flatnonzero(snap.active)
        if initial_utility is None:
            initial_utility = float(np.mean([snap.rows[i]["utility"] for i in active])) if len(active) else 0.0
        pool_ids = [snap.rows[i]["id"] for i in active]  # merge candidates: active skills, then accepted drafts
        pool_vecs = [snap.vectors[i] for i in active]
        known_ids = set(snap.by_id)
        new_rows: dict[str, dict] = {}
        changed: dict[str, dict] = {}  # existing rows whose parent_ids grew
        report = AdmissionReport()
        for i, draft in enumerate(drafts):
            scenario, strategy = (draft.scenario or "").strip(), (draft.strategy or "").strip()
            reason = (
                "empty_scenario" if not scenario
                else "empty_strategy" if not strategy
                else "too_long" if len(scenario) + len(strategy) > max_chars
                else "bad_embedding" if not (np.all(np.isfinite(emb[i])) and np.linalg.norm(emb[i]) > 0)
                else None
            )  # fmt: skip
            if reason:
                report.rejected.append((i, reason))
                continue
            new_id = uuid.uuid4().hex[:12]
            while new_id in known_ids:
                new_id = uuid.uuid4().hex[:12]
            known_ids.add(new_id)
            vec = _unit(emb[i])
            if pool_vecs:
                sims = np.stack(pool_vecs) @ vec
                best = int(np.argmax(sims))
                if sims[best] >= merge_threshold:
                    survivor = pool_ids[best]
                    row = new_rows.get(survivor) or changed.setdefault(survivor, dict(snap.rows[snap.by_id[survivor]]))
                    row["parent_ids"] = list(row["parent_ids"] or []) + [new_id]
                    report.merged[new_id] = survivor
                    continue
            new_rows[new_id] = dict(
                id=new_id, scenario=scenario, strategy=strategy, vector=vec.tolist(), utility=float(initial_utility),
                uses=0, wins=0, created_iteration=int(iteration), source_task=str(source_tasks[i]),
                source_episode=str(source_episodes[i]), parent_ids=[], status="active",
            )  # fmt: skip
            report.accepted.append(new_id)
            pool_ids.append(new_id)
            pool_vecs.append(vec)
        self._upsert(list(changed.values()) + list(new_rows.values()), snap)
        return report

    def update_utilities(self, outcomes: dict[str, list[float]], alpha: float) -> int:
        """EMA each skill's utility over its outcomes in order; uses += len, wins += count(r >= 1). One write."""
        self._check_writable("update utilities")
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
        active = [snap.rows[i] for i in np.flatnonzero(snap.active)]
        excess = len(active) - capacity
        if excess <= 0:
            return []
        order = sorted(active, key=lambda r: (eviction_score(r["utility"], r["uses"]), r["created_iteration"], r["id"]))
        rows = [dict(r, status="retired") for r in order[:excess]]
        self._upsert(rows, snap)
        return [r["id"] for r in rows]
