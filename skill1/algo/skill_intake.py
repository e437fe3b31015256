"""Which written skills enter the library, and which leave it: the pure policy, tested without LanceDB
(`skill1.library.store` applies it in one table write).

  reject   an empty scenario or strategy, one longer than `max_chars` together, a non-finite or zero
           embedding: counted by reason, never stored
  merge    a draft within `merge_threshold` cosine of an active skill or of an earlier draft of the same call
           joins that survivor (its id goes into the survivor's parent ids); ties go to the existing skill
  accept   the rest, each a new skill
  evict    above capacity, the lowest utility * log(uses + 1) go first (ties: oldest, then id)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from skill1.algo.utility import eviction_score
from skill1.types import SkillDraft

MERGE_CHUNK_ELEMENTS = 2_000_000  # similarity rows per chunk: bounded memory on a large library


@dataclass
class IntakeReport:
    """What one intake did (the library's `add`)."""

    accepted: list[str] = field(default_factory=list)  # ids of the new skills
    merged: dict[str, str] = field(default_factory=dict)  # new draft id -> surviving skill id
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (draft index, reason)


@dataclass
class IntakePlan:
    report: IntakeReport
    accepted: list[tuple[int, str, np.ndarray]]  # (draft index, new id, unit vector), in draft order


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# Text a stored skill never holds: our markup (a strategy is pasted into later prompts, where a tag would
# change what the policy reads), control characters (C0, DEL, C1) and bidi overrides (they rewrite a terminal)
MARKUP = re.compile(r"</?\s*(scenario|strategy|think|action|query|choice)\s*>", re.IGNORECASE)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def field_fault(text: str) -> str | None:
    """Why a scenario or strategy text cannot be stored ("tag_in_field", "control_chars"), else None."""
    if MARKUP.search(text):
        return "tag_in_field"
    if CONTROL.search(text):
        return "control_chars"
    return None


def reject_reason(draft: SkillDraft, embedding: np.ndarray, max_chars: int) -> str | None:
    scenario, strategy = (draft.scenario or "").strip(), (draft.strategy or "").strip()
    if not scenario:
        return "empty_scenario"
    if not strategy:
        return "empty_strategy"
    fault = field_fault(scenario) or field_fault(strategy)  # whichever path made the draft
    if fault:
        return fault
    if len(scenario) + len(strategy) > max_chars:
        return "too_long"
    if not (np.all(np.isfinite(embedding)) and np.linalg.norm(embedding) > 0):
        return "bad_embedding"
    return None


def _best_active(vecs: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine) of the closest active skill for every draft vector (-inf without active skills)."""
    best = np.full(len(vecs), -np.inf, dtype=np.float32)
    idx = np.zeros(len(vecs), dtype=np.int64)
    if len(active) and len(vecs):
        step = max(1, MERGE_CHUNK_ELEMENTS // len(active))
        for c in range(0, len(vecs), step):
            sims = vecs[c:c + step] @ active.T
            idx[c:c + step] = np.argmax(sims, axis=1)
            best[c:c + step] = sims[np.arange(len(sims)), idx[c:c + step]]
    return idx, best


def plan_intake(drafts: Sequence[SkillDraft], embeddings: np.ndarray, active_vectors: np.ndarray,
                active_ids: Sequence[str], *, merge_threshold: float, max_chars: int,
                new_id: Callable[[], str]) -> IntakePlan:
    """Decide every draft: rejected (with its reason), merged into a survivor, or accepted under a new id.
    `active_vectors` are unit vectors, row i the skill `active_ids[i]`."""
    reasons = [reject_reason(d, e, max_chars) for d, e in zip(drafts, embeddings)]
    ok = [i for i, r in enumerate(reasons) if r is None]
    vecs = unit(embeddings[ok]) if ok else np.zeros((0, embeddings.shape[1]), dtype=np.float32)
    pos = {i: p for p, i in enumerate(ok)}
    best_idx, best_sim = _best_active(vecs, active_vectors)
    report, accepted = IntakeReport(), []
    new_vecs, new_ids = np.zeros_like(vecs), []  # drafts accepted so far in this call
    for i, reason in enumerate(reasons):
        if reason:
            report.rejected.append((i, reason))
            continue
        draft_id, p = new_id(), pos[i]
        survivor, best = (active_ids[best_idx[p]], float(best_sim[p])) if len(active_ids) else (None, -np.inf)
        if new_ids:
            sims = new_vecs[:len(new_ids)] @ vecs[p]
            j = int(np.argmax(sims))
            if sims[j] > best:  # strictly closer: ties go to the existing skill
                survivor, best = new_ids[j], float(sims[j])
        if survivor is not None and best >= merge_threshold:
            report.merged[draft_id] = survivor
            continue
        report.accepted.append(draft_id)
        accepted.append((i, draft_id, vecs[p]))
        new_vecs[len(new_ids)] = vecs[p]
        new_ids.append(draft_id)
    return IntakePlan(report, accepted)


def eviction_order(rows: Sequence[dict], capacity: int) -> list[str]:
    """The ids of the active skills to retire down to `capacity`, in retirement order."""
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    excess = len(rows) - capacity
    if excess <= 0:
        return []
    order = sorted(rows, key=lambda r: (eviction_score(r["utility"], r["uses"]), r["created_iteration"], r["id"]))
    return [r["id"] for r in order[:excess]]
