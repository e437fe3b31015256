"""One version of the skill table, read once and decoded: rows, their stored and unit vectors, and lookups."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from skill1.algo.skill_intake import unit
from skill1.types import Skill


def skill_of(row: dict) -> Skill:
    """A Skill from a snapshot row without the dataclass __init__ (search builds thousands per batch); it owns
    its parent_ids list, so a caller mutating it cannot reach the cached snapshot."""
    s = object.__new__(Skill)
    s.__dict__.update(row)
    s.parent_ids = list(row["parent_ids"] or [])
    return s


def read_all(tbl) -> pa.Table:
    """Every row of the table's current version, with LanceDB's `_rowid` (what a vector search returns)."""
    return tbl.search().with_row_id(True).limit(None).to_arrow()


class Snapshot:
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
            self.vectors = self.stored if unit_already else unit(self.stored)  # rows from `add` are unit already
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
