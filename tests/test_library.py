"""SkillLibrary on a real LanceDB in tmp_path, with a tiny fake encoder (random unit vectors, dim 8)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest

from skill1.library import IntakeReport, LibraryEncoderMismatch, SkillLibrary
from skill1.library.store import LibraryDiff
from skill1.types import Skill, SkillDraft

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


def add(lib: SkillLibrary, ds, emb, iteration=0, initial_utility=0.0, **kw) -> IntakeReport:
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


# ---- diff ----------------------------------------------------------------------------------------------------
def _diff_fixture(lib):
    """t1: a, b, c (u 0.5). Then: a and b used, a near-duplicate of b merged, d added, c retired. t2."""
    rep = add(lib, drafts(3), np.stack([axis(0), axis(1), axis(2)]), iteration=0, initial_utility=0.5)
    a, b, c = rep.accepted
    v1 = lib.tag("t1")
    lib.update_utilities({a: [1.0], b: [0.0, 1.0]}, alpha=0.5)  # a: 0.75 (1 use), b: 0.625 (2 uses)
    rep2 = add(lib, [SkillDraft("b again", "b again"), SkillDraft("d", "d")],
               np.stack([unit(axis(1) + 0.01 * axis(5)), axis(3)]), iteration=1, initial_utility=0.5)
    (dup, survivor), = rep2.merged.items()
    (d,) = rep2.accepted
    assert survivor == b
    assert lib.evict(3) == [c]  # c and d both score 0; c is older
    v2 = lib.tag("t2")
    return a, b, c, d, dup, v1, v2


def test_diff_between_tags(lib):
    a, b, c, d, dup, v1, v2 = _diff_fixture(lib)
    diff = lib.diff("t1", "t2")
    assert isinstance(diff, LibraryDiff) and (diff.from_version, diff.to_version) == (v1, v2)
    assert [s.id for s in diff.added] == [d] and diff.added[0].status == "active"
    assert [s.id for s in diff.retired] == [c] and diff.retired[0].status == "retired"  # as it is in `to`
    assert diff.merged == {b: [dup]}
    assert diff.utility_changes == [
        (a, pytest.approx(0.5), pytest.approx(0.75), 0, 1),  # |du| 0.25 first
        (b, pytest.approx(0.5), pytest.approx(0.625), 0, 2),
    ]
    assert not diff.is_empty()
    # by version number, and b=None is the head
    assert lib.diff(v1, v2) == diff
    assert lib.diff("t1") == diff
    # reversed: nothing added or retired, the utility changes run backwards
    back = lib.diff("t2", "t1")
    assert back.added == [] and back.retired == [] and back.merged == {}
    assert [(i, u0, u1) for i, u0, u1, _, _ in back.utility_changes] == [
        (a, pytest.approx(0.75), pytest.approx(0.5)), (b, pytest.approx(0.625), pytest.approx(0.5))]


def test_diff_same_version_is_empty_and_head_moves(lib):
    a, b, c, d, dup, v1, v2 = _diff_fixture(lib)
    for x, y in (("t1", "t1"), ("t2", v2), (v1, v1)):
        diff = lib.diff(x, y)
        assert diff.is_empty() and diff.added == [] and diff.retired == [] and diff.merged == {}
        assert diff.utility_changes == []
    assert lib.diff("t2").is_empty()  # head == t2
    lib.update_utilities({d: [1.0, 1.0, 1.0]}, alpha=0.5)
    head = lib.diff("t2")
    assert head.to_version == lib.version and head.added == [] and head.retired == []
    assert head.utility_changes == [(d, pytest.approx(0.5), pytest.approx(0.9375), 0, 3)]
    # a pinned view diffs against its own version when b is None
    view = lib.checkout("t1")
    assert view.diff("t1").is_empty() and view.diff("t2", None).to_version == v1
    with pytest.raises(ValueError, match="nope"):
        lib.diff("nope")


# ---- export --------------------------------------------------------------------------------------------------
def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_export_jsonl(lib, tmp_path):
    a, b, c, d, dup, v1, v2 = _diff_fixture(lib)
    fields = [f.name for f in dataclasses.fields(Skill)]
    out = tmp_path / "all.jsonl"
    n = lib.export(str(out))
    objs = _read_jsonl(out)
    assert n == len(objs) == 4
    assert all(list(o) == fields for o in objs)  # exactly the Skill fields, in order, no vector
    skills = [Skill(**o) for o in objs]
    assert skills == lib.all_skills(active_only=False)  # same rows, same order (oldest first)
    assert {s.id: s.status for s in skills}[c] == "retired"
    assert {s.id: s.parent_ids for s in skills}[b] == [dup]
    # active only
    n_active = lib.export(str(tmp_path / "active.jsonl"), active_only=True)
    assert n_active == 3 and {o["id"] for o in _read_jsonl(tmp_path / "active.jsonl")} == {a, b, d}
    # with vectors: the stored unit vectors
    lib.export(str(tmp_path / "vec.jsonl"), with_vectors=True)
    vecs = {o["id"]: o["vector"] for o in _read_jsonl(tmp_path / "vec.jsonl")}
    assert len(vecs[a]) == DIM and np.allclose(vecs[a], axis(0)) and np.allclose(vecs[d], axis(3))
    # a tag exports that snapshot
    n_t1 = lib.export(str(tmp_path / "t1.jsonl"), "t1")
    t1 = {o["id"]: o for o in _read_jsonl(tmp_path / "t1.jsonl")}
    assert n_t1 == 3 and set(t1) == {a, b, c}
    assert {o["utility"] for o in t1.values()} == {0.5} and t1[c]["status"] == "active"
    assert t1[b]["parent_ids"] == []
    assert lib.export(str(tmp_path / "v1.jsonl"), v1) == 3
    # a pinned view exports its own version by default; an empty library writes an empty file
    assert lib.checkout("t1").export(str(tmp_path / "view.jsonl")) == 3
    empty = SkillLibrary.open(str(tmp_path / "empty"), ENC, DIM)
    assert empty.export(str(tmp_path / "sub" / "empty.jsonl")) == 0
    assert (tmp_path / "sub" / "empty.jsonl").read_text() == ""


# ---- compact -------------------------------------------------------------------------------------------------
@pytest.fixture
def pylance():
    """compact() prunes through pylance (LanceDB 0.40's own prune refuses while old versions are tagged)."""
    try:
        import lance
    except ImportError:
        pytest.fail("SkillLibrary.compact needs pylance to remove old versions: install the project's dependencies "
                    "(pylance==14.0.2, the release that pairs with lancedb 0.40's lance-namespace 0.13)")
    return lance


def _contents(lib) -> list[tuple]:
    return sorted(dataclasses.astuple(s) for s in lib.all_skills(active_only=False))


def test_compact_keeps_tags_and_head(lib, pylance):
    enc = FakeEncoder()
    tagged = {}
    for it in range(4):
        ds = drafts(3, prefix=f"i{it}-")
        rep = add(lib, ds, enc.encode([x.scenario for x in ds]), iteration=it, initial_utility=0.5)
        lib.update_utilities({rep.accepted[0]: [1.0]}, alpha=0.5)
        lib.evict(6)
        if it % 2 == 1:
            lib.tag(f"iter-{it}")
            tagged[f"iter-{it}"] = _contents(lib)
    add(lib, drafts(1, prefix="tail"), enc.encode(["tail0 scenario"]), iteration=9)  # untagged head
    head, tags = _contents(lib), lib.tags()
    before = {v["version"] for v in lib._tbl.list_versions()}
    assert len(before) > len(tags) + 1
    removed = lib.compact()
    after = {v["version"] for v in lib._tbl.list_versions()}
    assert removed == len(before - after) > 0
    assert after == set(tags.values()) | {lib.version}  # only the tagged versions and the head are left
    assert lib.tags() == tags
    for name, contents in tagged.items():
        assert _contents(lib.checkout(name)) == contents
    assert _contents(lib) == head
    # still a working head: writes, tags, reopen
    n_active = lib.size()
    add(lib, drafts(1, prefix="after"), enc.encode(["after0 scenario"]), iteration=10)
    lib.tag("iter-10")
    assert lib.size() == n_active + 1 and lib.checkout("iter-10").size() == n_active + 1
    assert lib.compact() >= 1  # the untagged pre-compaction head
    assert _contents(lib.checkout("iter-1")) == tagged["iter-1"]
    with pytest.raises(PermissionError, match="read-only"):
        lib.checkout("iter-3").compact()


def test_compact_without_pylance_only_optimizes(lib, monkeypatch):
    add(lib, drafts(2), np.stack([axis(0), axis(1)]))
    lib.tag("one")
    add(lib, drafts(1, "x"), axis(2)[None])
    add(lib, drafts(1, "y"), axis(3)[None])
    head = _contents(lib)
    monkeypatch.setitem(sys.modules, "lance", None)  # `import lance` raises ImportError
    with pytest.warns(RuntimeWarning, match="pylance"):
        assert lib.compact() == 0
    assert _contents(lib) == head and lib.checkout("one").size() == 2


# ---- ANN index -----------------------------------------------------------------------------------------------
def _random_unit(rng, n, dim=DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _add_rows(lib, vecs, iteration=0, prefix="r"):
    n = len(vecs)
    ds = [SkillDraft(f"{prefix}{iteration}-{i}", "s") for i in range(n)]
    return add(lib, ds, vecs, iteration=iteration, merge_threshold=2.0)  # no merges: every row is kept


def _exact_top(lib, q, k):
    """The exact ranking of a library view (the index switched off on this instance)."""
    saved = lib.index_threshold
    lib.index_threshold = 1 << 60
    try:
        return lib.search(q, k)
    finally:
        lib.index_threshold = saved


def _recall3(got, exact) -> float:
    return float(np.mean([len({s.id for s, _ in g[:3]} & {s.id for s, _ in e[:3]}) / 3 for g, e in zip(got, exact)]))


def test_index_built_past_threshold_and_used(lib, monkeypatch):
    monkeypatch.setattr(SkillLibrary, "index_threshold", 1000)
    rng = np.random.default_rng(0)
    _add_rows(lib, _random_unit(rng, 600), iteration=0)
    assert not lib.has_index()
    lib.tag("small")
    v = lib.version
    _add_rows(lib, _random_unit(rng, 1400), iteration=1)  # crosses the threshold: write + index build
    assert lib.has_index() and lib.version == v + 2
    lib.tag("big")
    calls = []
    real = SkillLibrary._index_search
    monkeypatch.setattr(SkillLibrary, "_index_search", lambda self, *a: calls.append(1) or real(self, *a))
    queries = _random_unit(rng, 60)
    got = lib.search(queries, 5)
    assert lib.last_search_path == "index" and len(calls) == 1
    exact = _exact_top(lib, queries, 5)
    assert _recall3(got, exact) >= 0.9
    for g, e in zip(got, exact):  # cosines are exact on both paths
        assert len(g) == 5 and [sim for _, sim in g] == sorted((sim for _, sim in g), reverse=True)
        common = {s.id: sim for s, sim in e}
        assert all(sim == pytest.approx(common[s.id], abs=1e-6) for s, sim in g if s.id in common)
    # a large batch goes exact; a single query goes through the index
    lib.search(_random_unit(rng, lib.index_max_batch), 3)
    assert lib.last_search_path == "exact"
    lib.search(queries[:1], 3)
    assert lib.last_search_path == "index" and len(calls) == 2
    # pinned before the index existed: exact, and only that version's rows
    small = lib.checkout("small")
    res = small.search(queries, 5)
    assert small.last_search_path == "exact" and not small.has_index()
    ids_small = {s.id for s in small.all_skills()}
    assert all(s.id in ids_small for hits in res for s, _ in hits)


def test_index_never_returns_retired_and_fills_top_m(lib, monkeypatch):
    monkeypatch.setattr(SkillLibrary, "index_threshold", 1000)
    rng = np.random.default_rng(1)
    vecs = _random_unit(rng, 2000)
    rep = _add_rows(lib, vecs)
    ids = rep.accepted
    keep = ids[100:]
    lib.update_utilities({i: [1.0] for i in keep}, alpha=0.5)  # the first 100 stay unused: evicted first
    assert sorted(lib.evict(1900)) == sorted(ids[:100])
    assert lib.has_index()
    retired = set(ids[:100])
    queries = vecs[:40]  # retired rows' own vectors: each would be its top hit
    for postfilter_max in (SkillLibrary.index_postfilter_max_retired, 0):  # over-fetch, then LanceDB prefilter
        monkeypatch.setattr(SkillLibrary, "index_postfilter_max_retired", postfilter_max)
        got = lib.search(queries, 10)
        assert lib.last_search_path == "index"
        assert all(len(hits) == 10 for hits in got)
        assert not retired & {s.id for hits in got for s, _ in hits}
        assert all(s.status == "active" for hits in got for s, _ in hits)
        assert _recall3(got, _exact_top(lib, queries, 10)) >= 0.9
    # asking for more than there are active rows returns them all, once each
    (everything,) = lib.search(queries[:1], 5000)
    assert len(everything) == 1900 and len({s.id for s, _ in everything}) == 1900


def test_pinned_indexed_view_is_unaffected_by_later_writes(lib, monkeypatch):
    monkeypatch.setattr(SkillLibrary, "index_threshold", 1000)
    rng = np.random.default_rng(2)
    _add_rows(lib, _random_unit(rng, 1500), iteration=0)
    lib.tag("pin")
    view = lib.checkout("pin")
    queries = _random_unit(rng, 40)
    before = [[(s.id, sim) for s, sim in hits] for hits in view.search(queries, 5)]
    assert view.last_search_path == "index"
    # the head grows past the rebuild fraction (index rebuilt) and changes utilities
    _add_rows(lib, _random_unit(rng, 600), iteration=1)
    idx = lib._vector_index()
    assert (idx.num_indexed_rows, idx.num_unindexed_rows) == (2100, 0)  # 600 new rows > 10%: rebuilt
    lib.update_utilities({s.id: [1.0] for s in lib.all_skills()[:50]}, alpha=0.5)
    assert lib.size() == 2100
    after = [[(s.id, sim) for s, sim in hits] for hits in view.search(queries, 5)]
    assert after == before and view.size() == 1500
    assert {s.utility for s in view.all_skills()} == {0.0}
    assert _recall3(view.search(queries, 5), _exact_top(view, queries, 5)) >= 0.9


# ---- wiring: compaction on a schedule ------------------------------------------------------------------------
def test_update_library_compacts_every_n_iterations(tmp_path, pylance):
    from skill1.config import ConfigError, load_config
    from skill1.loop.steps import update_library
    from skill1.types import Episode, Task

    with pytest.raises(ConfigError, match="compact_every"):
        load_config(None, ["library.compact_every=-1"])
    assert load_config(None, ["library.compact_every=0"]).library.compact_every == 0
    cfg = load_config(None, ["library.compact_every=2"])
    lib = SkillLibrary.open(str(tmp_path / "lib"), ENC, DIM)
    enc = FakeEncoder()

    def episodes(it):
        return [Episode(f"e{it}-{i}", "g", Task(f"t{i}", "builtin", "f", "do"), [], [], None, 1.0, True, 1, 0,
                        draft=SkillDraft(f"scenario {it} {i}", "strategy")) for i in range(2)]

    metrics = [update_library(lib, enc, episodes(it), it, cfg) for it in (1, 2, 3, 4)]
    assert [m["library/versions_compacted"] for m in metrics][::2] == [0.0, 0.0]  # iterations 1 and 3
    assert metrics[1]["library/versions_compacted"] > 0 and metrics[3]["library/versions_compacted"] > 0
    assert set(lib.tags()) == {"iter-1", "iter-2", "iter-3", "iter-4"}
    assert [lib.checkout(f"iter-{it}").size() for it in (1, 2, 3, 4)] == [2, 4, 6, 8]
    assert {v["version"] for v in lib._tbl.list_versions()} == set(lib.tags().values()) | {lib.version}


def test_nonfinite_utilities_are_refused_and_nothing_is_written(lib):
    a, b = add(lib, drafts(2), np.stack([axis(0), axis(1)]), initial_utility=0.5).accepted
    v = lib.version
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="initial utility must be finite"):
            add(lib, drafts(1, "n"), axis(2)[None], initial_utility=bad)
        with pytest.raises(ValueError, match=f"skill {b}: outcomes .* non-finite utility"):
            lib.update_utilities({a: [1.0], b: [bad]}, alpha=0.5)  # a's valid update is not written either
    for alpha in (math.nan, 0.0, 1.5):
        with pytest.raises(ValueError, match="alpha must be in"):
            lib.update_utilities({a: [1.0]}, alpha=alpha)
    assert lib.version == v and [(s.utility, s.uses) for s in lib.get([a, b])] == [(0.5, 0), (0.5, 0)]


def test_open_without_create_refuses_a_directory_that_is_not_a_library(tmp_path):
    from skill1.library import LibraryNotFound

    (tmp_path / "notes.txt").write_text("not a library")
    with pytest.raises(LibraryNotFound, match="is not a skill library"):
        SkillLibrary.open(str(tmp_path), ENC, DIM, create=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no table was written into it
