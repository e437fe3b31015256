"""The versioned skill library: the only module that knows LanceDB.

One LanceDB table, one row per skill (retired skills keep their row). Every mutating call is at most one
table write, hence at most one new table version, plus, once the library holds `index_threshold` active
skills, an occasional vector-index (re)build (its own version); `tag`/`checkout`/`restore`/`diff`/`compact`
expose LanceDB's versioning. Read-modify-write calls (add, update_utilities, evict) assume one writer per
table (the training driver). Which drafts enter and which skills leave is `skill1.algo.skill_intake`'s pure
policy; this module applies it. A writer killed mid-write leaves the table at its last committed version
(LanceDB commits a version by writing its manifest last). Never fork a process after LanceDB was used in it
(Rust panic in the child): use spawn or Ray actors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa

from skill1.algo.skill_intake import IntakeReport, eviction_order, plan_intake
from skill1.library.search import SkillSearch
from skill1.library.snapshot import Snapshot, read_all, skill_of
from skill1.algo.utility import ema_update
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


def _iteration(tag: str) -> int | None:
    """k of the trainer's `iter-k` tags; None for any other name."""
    return int(tag[5:]) if tag.startswith("iter-") and tag[5:].isdigit() else None


class SkillLibrary(SkillSearch):
    """A LanceDB-backed skill table; `checkout` gives read-only views pinned at an old version. How it answers
    a query (exact numpy or its vector index) is `SkillSearch`'s."""

    def __init__(self, db, tbl, path: str, table: str, encoder_name: str, dim: int, read_only: bool = False):
        self._db, self._tbl = db, tbl
        self.path, self.table_name = path, table
        self.encoder_name, self.dim, self.read_only = encoder_name, int(dim), read_only
        self._schema = skill_schema(encoder_name, dim)
        self._snap: tuple[int, Snapshot] | None = None
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
                    added.append(skill_of(r))
            else:
                if old["status"] == "active" and r["status"] == "retired":
                    retired.append(skill_of(r))
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
    def _snapshot(self, version: int | None = None) -> Snapshot:
        version = self.version if version is None else version
        if self._snap is None or self._snap[0] != version:
            self._snap = (version, Snapshot(read_all(self._tbl), self.dim))
        return self._snap[1]

    def _snapshot_at(self, version: int, with_vectors: bool = True) -> Snapshot:
        if version == self.version:
            return self._snapshot()
        tbl = self._db.open_table(self.table_name)
        tbl.checkout(version)
        return Snapshot(read_all(tbl), self.dim, with_vectors=with_vectors)

    def size(self, active_only: bool = True) -> int:
        snap = self._snapshot()
        return int(snap.active.sum()) if active_only else len(snap.rows)

    def all_skills(self, active_only: bool = True) -> list[Skill]:
        snap = self._snapshot()
        return [skill_of(r) for r, a in zip(snap.rows, snap.active) if a or not active_only]

    def get(self, ids: list[str]) -> list[Skill]:
        snap = self._snapshot()
        missing = [i for i in ids if i not in snap.by_id]
        if missing:
            raise KeyError(f"Unknown skill ids: {missing}")
        return [skill_of(snap.rows[snap.by_id[i]]) for i in ids]

    # ---- writes -------------------------------------------------------------------------------
    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise PermissionError(
                f"Cannot {what}: this skill library view is pinned at version {self.version} and is read-only; "
                f"write to the head library instead."
            )

    def _upsert(self, rows: list[dict], snap: Snapshot) -> None:
        """One table write (one new version) for new and changed rows; nothing to write, no version."""
        if not rows:
            return
        for r in rows:
            if "vector" not in r:
                r["vector"] = snap.stored[snap.by_id[r["id"]]].tolist()
        data = pa.Table.from_pylist(rows, schema=self._schema)
        self._tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        self._maintain_index()

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
    ) -> IntakeReport:
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
        known_ids = set(snap.by_id)

        def new_id() -> str:
            sid = uuid.uuid4().hex[:12]
            while sid in known_ids:
                sid = uuid.uuid4().hex[:12]
            known_ids.add(sid)
            return sid

        plan = plan_intake(drafts, emb, snap.active_vectors if len(active) else np.zeros((0, self.dim), np.float32),
                           [snap.rows[i]["id"] for i in active], merge_threshold=merge_threshold,
                           max_chars=max_chars, new_id=new_id)
        new_rows: dict[str, dict] = {}
        for i, sid, vec in plan.accepted:
            new_rows[sid] = dict(
                id=sid, scenario=drafts[i].scenario.strip(), strategy=drafts[i].strategy.strip(), vector=vec.tolist(),
                utility=float(initial_utility), uses=0, wins=0, created_iteration=int(iteration),
                source_task=str(source_tasks[i]), source_episode=str(source_episodes[i]), parent_ids=[],
                status="active")
        changed: dict[str, dict] = {}  # existing rows whose parent ids grew
        for sid, survivor in plan.report.merged.items():
            row = new_rows.get(survivor) or changed.setdefault(survivor, dict(snap.rows[snap.by_id[survivor]]))
            row["parent_ids"] = list(row["parent_ids"] or []) + [sid]
        self._upsert(list(changed.values()) + list(new_rows.values()), snap)
        return plan.report

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
        snap = self._snapshot()
        retire = eviction_order([snap.rows[i] for i in snap.active_idx], capacity)
        rows = [dict(snap.rows[snap.by_id[sid]], status="retired") for sid in retire]
        if rows:
            self._upsert(rows, snap)
        return [r["id"] for r in rows]
