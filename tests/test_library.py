"""SkillLibrary on a real LanceDB in tmp_path, with a tiny fake encoder (random unit vectors, dim 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skill1.library import AdmissionReport, LibraryEncoderMismatch, SkillLibrary
from skill1.types import SkillDraft

DIM = 8
ENC = "fake-encoder"


class FakeEncoder:
    """Deterministic random unit vector per text."""

    name, dim = ENC, DIM

    def encode(self, texts):
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM)
            out[i] = v / np.linalg.norm(v)
        return out


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def axis(k: int) -> np.ndarray:
    return unit(np.eye(DIM)[k])


def drafts(n: int, prefix: str = "s") -> list[SkillDraft]:
    return [SkillDraft(f"{prefix}{i} scenario", f"{prefix}{i} strategy") for i in range(n)]


def add(lib: SkillLibrary, ds, emb, iteration=0, initial_utility=0.0, **kw) -> AdmissionReport:
    return lib.add(
        ds, np.asarray(emb, dtype=np.float32), iteration=iteration,
        source_tasks=[f"t{i}" for i in range(len(ds))], source_episodes=[f"e{i}" for i in range(len(ds))],
        initial_utility=initial_utility, **kw,
    )  # fmt: skip


@pytest.fixture
def lib(tmp_path) -> SkillLibrary:
    return SkillLibrary.open(str(tmp_path / "lib"), ENC, DIM)


def test_open_reopen_persists_rows(tmp_path):
    path = str(tmp_path / "lib")
    lib = SkillLibrary.open(path, ENC, DIM)
    assert lib.size() == 0 and lib.all_skills() == []
    enc = FakeEncoder()
    ds = drafts(3)
    rep = add(lib, ds, enc.encode([d.scenario for d in ds]), iteration=2)
    assert len(rep.accepted) == 3
    again = SkillLibrary.open(path, ENC, DIM)
    assert again.version == lib.version
    skills = {s.id: s for s in again.all_skills()}
    assert set(skills) == set(rep.accepted)
    s = skills[rep.accepted[1]]
    assert (s.scenario, s.strategy, s.created_iteration, s.source_task, s.source_episode) == (
        "s1 scenario", "s1 strategy", 2, "t1", "e1"
    )
    assert (s.uses, s.wins, s.parent_ids, s.status) == (0, 0, [], "active")
    assert [x.id for x in again.get([rep.accepted[2], rep.accepted[0]])] == [rep.accepted[2], rep.accepted[0]]
    with pytest.raises(KeyError, match="nope"):
        again.get(["nope"])


def test_encoder_mismatch(tmp_path):
    path = str(tmp_path / "lib")
    SkillLibrary.open(path, ENC, DIM)
    with pytest.raises(LibraryEncoderMismatch) as err:
        SkillLibrary.open(path, "other-encoder", DIM)
    msg = str(err.value)
    assert ENC in msg and "other-encoder" in msg and path in msg
    with pytest.raises(LibraryEncoderMismatch):
        SkillLibrary.open(path, ENC, DIM * 2)


def test_add_one_version_per_call(lib):
    enc = FakeEncoder()
    v0 = lib.version
    ds = drafts(5)
    rep = add(lib, ds, enc.encode([d.scenario for d in ds]))
    assert len(rep.accepted) == 5 and len(set(rep.accepted)) == 5 and rep.merged == {} and rep.rejected == []
    assert all(len(i) <= 16 and int(i, 16) >= 0 for i in rep.accepted)
    assert lib.version == v0 + 1 and lib.size() == 5
    # a merge and a new row in one call: still one version
    ds2 = [SkillDraft("dup", "dup"), SkillDraft("fresh", "fresh")]
    rep2 = add(lib, ds2, np.stack([enc.encode(["s0 scenario"])[0], enc.encode(["fresh"])[0]]))
    assert len(rep2.accepted) == 1 and len(rep2.merged) == 1
    assert lib.version == v0 + 2
    # nothing to write: no new version
    add(lib, [SkillDraft("", "x")], np.ones((1, DIM)))
    add(lib, [], np.zeros((0, DIM)))
    assert lib.version == v0 + 2


def test_reject_reasons(lib):
    ds = [
        SkillDraft("", "do it"),
        SkillDraft("when x", "   "),
        SkillDraft("a" * 60, "b" * 41),
        SkillDraft("fine", "ok"),
    ]
    rep = add(lib, ds, np.stack([axis(0), axis(1), axis(2), axis(3)]), max_chars=100)
    assert rep.rejected == [(0, "empty_scenario"), (1, "empty_strategy"), (2, "too_long")]
    assert len(rep.accepted) == 1 and lib.size() == 1


def test_near_duplicate_merge_with_lineage(lib):
    rep = add(lib, drafts(2), np.stack([axis(0), axis(1)]), initial_utility=0.7)
    a, b = rep.accepted
    near_a = unit(axis(0) + 0.05 * axis(2))  # cos ~ 0.9988
    rep2 = add(lib, [SkillDraft("again a", "again a")], near_a[None])
    (new_id, survivor), = rep2.merged.items()
    assert survivor == a and rep2.accepted == []
    assert lib.size() == 2
    (sa,) = lib.get([a])
    assert sa.parent_ids == [new_id] and sa.scenario == "s0 scenario" and sa.utility == pytest.approx(0.7)
    # within one batch: the second draft merges into the first (a new row) and a third into b
    batch = [SkillDraft("c", "c"), SkillDraft("c2", "c2"), SkillDraft("b2", "b2")]
    emb = np.stack([axis(3), unit(axis(3) + 0.01 * axis(4)), unit(axis(1) + 0.01 * axis(5))])
    rep3 = add(lib, batch, emb)
    assert len(rep3.accepted) == 1
    c = rep3.accepted[0]
    assert set(rep3.merged.values()) == {c, b}
    assert lib.size() == 3
    (sc,) = lib.get([c])
    (sb,) = lib.get([b])
    assert sc.parent_ids == [k for k, v in rep3.merged.items() if v == c]
    assert sb.parent_ids == [k for k, v in rep3.merged.items() if v == b]
    # below the threshold: a new row
    far = unit(axis(0) + 0.5 * axis(6))  # cos ~ 0.894
    assert len(add(lib, [SkillDraft("d", "d")], far[None]).accepted) == 1


def test_merge_ignores_retired(lib):
    rep = add(lib, drafts(2), np.stack([axis(0), axis(1)]))
    lib.update_utilities({rep.accepted[1]: [1.0]}, alpha=0.5)
    assert lib.evict(1) == [rep.accepted[0]]
    rep2 = add(lib, [SkillDraft("back", "back")], axis(0)[None])
    assert len(rep2.accepted) == 1 and rep2.merged == {}


def test_initial_utility_default_is_library_mean(lib):
    rep = add(lib, drafts(2), np.stack([axis(0), axis(1)]), initial_utility=None)
    assert [s.utility for s in lib.get(rep.accepted)] == [0.0, 0.0]  # empty library -> 0.0
    lib.update_utilities({rep.accepted[0]: [1.0]}, alpha=0.5)  # utilities 0.5 and 0.0
    rep2 = add(lib, [SkillDraft("n", "n")], axis(2)[None], initial_utility=None)
    assert lib.get(rep2.accepted)[0].utility == pytest.approx(0.25)
    rep3 = add(lib, [SkillDraft("m", "m")], axis(3)[None], initial_utility=0.9)
    assert lib.get(rep3.accepted)[0].utility == pytest.approx(0.9)


@pytest.mark.parametrize("exact", [True, False])
def test_search_order_and_active_only(lib, exact):
    if not exact:
        lib.exact_search_max_rows = 0  # force LanceDB's vector search
    assert lib.search(np.stack([axis(0), axis(1)]), 3) == [[], []]
    emb = np.stack([axis(0), unit(axis(0) + 0.5 * axis(1)), unit(axis(0) + 2.0 * axis(1)), axis(1), -axis(0)])
    rep = add(lib, drafts(5), emb)
    ids = rep.accepted
    res = lib.search(np.stack([axis(0), axis(1)]), 3)
    assert [s.id for s, _ in res[0]] == [ids[0], ids[1], ids[2]]
    assert [sim for _, sim in res[0]] == pytest.approx([1.0, 2 / math.sqrt(5), 1 / math.sqrt(5)], abs=1e-5)
    assert [s.id for s, _ in res[1]] == [ids[3], ids[2], ids[1]]
    (single,) = lib.search(-axis(0)[None], 1)
    assert single[0][0].id == ids[4] and single[0][1] == pytest.approx(1.0, abs=1e-5)
    full = lib.search(axis(0)[None], 10)[0]
    assert len(full) == 5 and full[-1][1] == pytest.approx(-1.0, abs=1e-5)
    # retire the best match: it is never returned again
    lib.update_utilities({i: [1.0] for i in ids if i != ids[0]}, alpha=0.5)
    assert lib.evict(4) == [ids[0]]
    res = lib.search(axis(0)[None], 10)[0]
    assert ids[0] not in [s.id for s, _ in res] and len(res) == 4
    assert all(s.status == "active" for s, _ in res)


def test_update_utilities_ema_uses_wins(lib):
    rep = add(lib, drafts(3), np.stack([axis(0), axis(1), axis(2)]), initial_utility=0.5)
    a, b, c = rep.accepted
    v = lib.version
    n = lib.update_utilities({a: [1.0, 0.0], b: [1.0, 1.0, 0.5], c: []}, alpha=0.1)
    assert n == 2 and lib.version == v + 1
    sa, sb, sc = lib.get([a, b, c])
    assert sa.utility == pytest.approx(0.495)  # 0.5 -> 0.55 -> 0.495
    assert (sa.uses, sa.wins) == (2, 1)
    assert sb.utility == pytest.approx(0.9 * (0.9 * 0.55 + 0.1) + 0.05)  # 0.55 -> 0.595 -> 0.5855
    assert (sb.uses, sb.wins) == (3, 2)
    assert (sc.utility, sc.uses, sc.wins) == (0.5, 0, 0)
    assert sa.scenario == "s0 scenario"  # the rest of the row is untouched
    assert lib.search(axis(0)[None], 1)[0][0][0].id == a  # and so is its vector
    with pytest.raises(KeyError, match="ghost"):
        lib.update_utilities({a: [1.0], "ghost": [1.0]}, alpha=0.1)
    assert lib.version == v + 1 and lib.update_utilities({}, alpha=0.1) == 0 and lib.version == v + 1


def test_evict_order(lib):
    rep = add(lib, drafts(4), np.stack([axis(i) for i in range(4)]), initial_utility=0.0)
    a, b, c, d = rep.accepted
    # utilities/uses chosen so that u*log(n+1) orders: b (0.0) < d < a < c
    lib.update_utilities({a: [1.0] * 2, c: [1.0] * 6, d: [1.0]}, alpha=0.5)
    scores = {s.id: s.utility * math.log(s.uses + 1) for s in lib.all_skills()}
    assert sorted(scores, key=scores.get) == [b, d, a, c]
    v = lib.version
    assert lib.evict(10) == [] and lib.version == v
    assert lib.evict(1) == [b, d, a]
    assert lib.version == v + 1
    assert [s.id for s in lib.all_skills()] == [c] and lib.size() == 1 and lib.size(active_only=False) == 4
    retired = {s.id: s.status for s in lib.all_skills(active_only=False)}
    assert retired == {a: "retired", b: "retired", c: "active", d: "retired"}


def test_evict_ties_oldest_first(lib):
    r1 = add(lib, [SkillDraft("old", "old")], axis(0)[None], iteration=1)
    r2 = add(lib, [SkillDraft("new", "new")], axis(1)[None], iteration=5)
    r0 = add(lib, [SkillDraft("mid", "mid")], axis(2)[None], iteration=3)
    assert lib.evict(1) == [r1.accepted[0], r0.accepted[0]]
    assert [s.id for s in lib.all_skills()] == r2.accepted


def test_tags(lib):
    add(lib, drafts(1), axis(0)[None])
    v = lib.version
    assert lib.tag("iter-1") == v
    add(lib, drafts(1, "t"), axis(1)[None])
    assert lib.tag("iter-2") == v + 1
    assert lib.tags() == {"iter-1": v, "iter-2": v + 1}
    with pytest.raises(ValueError, match="iter-1"):
        lib.tag("iter-1")


def test_checkout_is_pinned_and_read_only(lib):
    rep = add(lib, drafts(2), np.stack([axis(0), axis(1)]), initial_utility=0.5)
    lib.tag("before")
    v = lib.version
    view = lib.checkout("before")
    by_version = lib.checkout(v)
    assert view.version == v and by_version.version == v
    add(lib, drafts(1, "x"), axis(2)[None])
    lib.update_utilities({rep.accepted[0]: [1.0]}, alpha=0.5)
    lib.evict(1)
    assert lib.size() == 1 and lib.version == v + 3
    for pinned in (view, by_version):
        assert pinned.version == v and pinned.size() == 2
        assert {s.utility for s in pinned.all_skills()} == {0.5}
        assert [s.id for s, _ in pinned.search(axis(1)[None], 1)[0]] == [rep.accepted[1]]
    with pytest.raises(PermissionError, match="read-only"):
        view.add(drafts(1, "y"), axis(3)[None], iteration=0, source_tasks=["t"], source_episodes=["e"],
                 initial_utility=0.0)  # fmt: skip
    with pytest.raises(PermissionError):
        view.update_utilities({rep.accepted[0]: [1.0]}, alpha=0.1)
    with pytest.raises(PermissionError):
        view.evict(0)
    with pytest.raises(PermissionError):
        view.restore(v)
    with pytest.raises(ValueError, match="no-such-tag"):
        lib.checkout("no-such-tag")
    with pytest.raises(ValueError):
        lib.checkout(10_000)


def test_restore_makes_new_head(lib, tmp_path):
    rep = add(lib, drafts(2), np.stack([axis(0), axis(1)]), initial_utility=0.5)
    lib.tag("good")
    good = lib.version
    add(lib, drafts(2, "bad"), np.stack([axis(2), axis(3)]))
    lib.update_utilities({rep.accepted[0]: [0.0, 0.0]}, alpha=0.5)
    head = lib.version
    assert lib.restore("good") == head + 1 and lib.version == head + 1
    assert sorted(s.id for s in lib.all_skills()) == sorted(rep.accepted)
    assert {s.utility for s in lib.all_skills()} == {0.5}
    # the restored head is writable and persists
    add(lib, drafts(1, "z"), axis(4)[None])
    again = SkillLibrary.open(str(tmp_path / "lib"), ENC, DIM)
    assert again.size() == 3 and again.version == head + 2
    assert lib.restore(good) == head + 3 and lib.size() == 2
