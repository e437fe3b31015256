"""`skill1 library ...` on a small run directory: a real LanceDB library with real MiniLM embeddings.

The library (built by `make_run`):
  iter-1: microwave, sink, lamp (u = 0.2, n = 0, iteration 1)
  then: utilities (alpha 0.5) microwave [1, 1] -> u 0.8, n 2, wins 2; sink [0] -> u 0.1, n 1
        add fridge, drawer (u = 0.5, iteration 2) and a microwave duplicate (merged into microwave)
        evict to 4 active: lamp retires (score 0, oldest)
  iter-2 (= head): microwave, sink, fridge, drawer active; lamp retired
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from skill1.cli import main
from skill1.config import load_config, save_config
from skill1.types import SkillDraft

SKILLS = {
    "microwave": ("heat an object using the microwave",
                  "go to the microwave, open it, put the object inside, close it and turn it on"),
    "sink": ("clean an object at the sink basin", "take the object to the sink basin and rinse it with water"),
    "lamp": ("examine an object under the desk lamp", "pick up the object, go to the desk lamp and switch it on"),
    "fridge": ("cool an object using the fridge", "open the fridge, put the object inside and close the door"),
    "drawer": ("put a knife away in a drawer", "find the knife, open the drawer, place the knife inside, close it"),
}


@pytest.fixture(scope="module")
def encoder():
    from skill1.library_cli import _encoder

    return _encoder("all-MiniLM-L6-v2")  # the same cached instance the commands use: loaded once


def _add(lib, encoder, names, iteration, initial_utility):
    drafts = [SkillDraft(*SKILLS[n]) for n in names]
    rep = lib.add(drafts, encoder.encode([d.scenario for d in drafts]), iteration=iteration,
                  source_tasks=[f"task-{n}" for n in names], source_episodes=[f"ep-{n}" for n in names],
                  initial_utility=initial_utility)
    return rep


def make_run(root: Path, encoder) -> tuple[Path, dict[str, str]]:
    from skill1.library import SkillLibrary

    run = root / "clitest"
    run.mkdir(parents=True)
    save_config(load_config(None, ["name=clitest", f"output_dir={root}"]), run / "config.yaml")
    lib = SkillLibrary.open(str(run / "library"), encoder.name, encoder.dim)
    ids = dict(zip(["microwave", "sink", "lamp"], _add(lib, encoder, ["microwave", "sink", "lamp"], 1, 0.2).accepted))
    lib.tag("iter-1")
    lib.update_utilities({ids["microwave"]: [1.0, 1.0], ids["sink"]: [0.0]}, alpha=0.5)
    drafts = [SkillDraft(*SKILLS["fridge"]), SkillDraft(*SKILLS["drawer"]),
              SkillDraft(SKILLS["microwave"][0], "use the microwave to heat it")]  # same scenario: merges
    rep = lib.add(drafts, encoder.encode([d.scenario for d in drafts]), iteration=2,
                  source_tasks=["t-f", "t-d", "t-m"], source_episodes=["e-f", "e-d", "e-m"], initial_utility=0.5)
    assert len(rep.accepted) == 2 and list(rep.merged.values()) == [ids["microwave"]]
    ids.update(zip(["fridge", "drawer"], rep.accepted))
    ids["merged_draft"] = next(iter(rep.merged))
    assert lib.evict(4) == [ids["lamp"]]
    lib.tag("iter-2")
    return run, ids


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    """A run that the read-only tests share (restore tests build their own)."""
    return make_run(tmp_path_factory.mktemp("runs"), encoder)


@pytest.fixture
def fresh(tmp_path, encoder):
    return make_run(tmp_path, encoder)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run_cli(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def assert_one_line_error(rc: int, out: str, err: str, *fragments: str, prompted: bool = False) -> None:
    assert rc == 2
    assert ("[y/N]" in out) if prompted else out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


# ---- ls / show ---------------------------------------------------------------------------------
def test_ls(built, capsys):
    run, _ = built
    rows = run_json(capsys, "library", "ls", "--run", run)
    assert [r["tag"] for r in rows] == ["iter-1", "iter-2"]
    assert rows[0]["version"] < rows[1]["version"]
    assert [r["active_skills"] for r in rows] == [3, 4]
    assert rows[0]["mean_utility"] == pytest.approx(0.2)
    assert rows[1]["mean_utility"] == pytest.approx((0.8 + 0.1 + 0.5 + 0.5) / 4)
    assert [r["total_uses"] for r in rows] == [0, 3]
    rc, out, _ = run_cli(capsys, "library", "ls", "--run", run)
    assert rc == 0 and "iter-1" in out and "iter-2" in out and "0.475" in out


def test_show_sort_top_and_all(built, capsys):
    run, ids = built
    doc = run_json(capsys, "library", "show", "--run", run)
    assert doc["snapshot"]["tags"] == ["iter-2"] and doc["total"] == 4
    got = [s["id"] for s in doc["skills"]]
    assert got[0] == ids["microwave"] and got[-1] == ids["sink"]
    assert set(got[1:3]) == {ids["fridge"], ids["drawer"]}
    mw = doc["skills"][0]
    assert (mw["scenario"], mw["strategy"]) == SKILLS["microwave"]  # full text in JSON
    assert (mw["uses"], mw["wins"], mw["status"], mw["parent_ids"]) == (2, 2, "active", [ids["merged_draft"]])

    by_uses = run_json(capsys, "library", "show", "--run", run, "--sort", "uses", "--top", "2")
    assert [s["id"] for s in by_uses["skills"]] == [ids["microwave"], ids["sink"]] and by_uses["total"] == 4
    by_created = run_json(capsys, "library", "show", "--run", run, "--sort", "created")
    assert {s["id"] for s in by_created["skills"][:2]} == {ids["fridge"], ids["drawer"]}

    everything = run_json(capsys, "library", "show", "--run", run, "--all")
    assert everything["total"] == 5
    assert {s["id"]: s["status"] for s in everything["skills"]}[ids["lamp"]] == "retired"

    old = run_json(capsys, "library", "show", "--run", run, "--tag", "iter-1")
    assert {s["id"] for s in old["skills"]} == {ids["microwave"], ids["sink"], ids["lamp"]}
    by_version = run_json(capsys, "library", "show", "--run", run, "--tag", str(old["snapshot"]["version"]))
    assert by_version["skills"] == old["skills"] and by_version["snapshot"]["tags"] == ["iter-1"]

    rc, out, _ = run_cli(capsys, "library", "show", "--run", run, "--all")
    assert rc == 0 and ids["lamp"] in out and "retired" in out and "heat an object using the microwave" in out
    assert "…" in out  # the long strategies are truncated in the table


# ---- search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["iter-1", None])
def test_search_finds_the_closest_skill(built, capsys, tag):
    run, ids = built
    extra = ["--tag", tag] if tag else []
    doc = run_json(capsys, "library", "search", "--run", run, "heat food in the microwave", *extra)
    results = doc["results"]
    assert results[0]["skill_id"] == ids["microwave"] and results[0]["rank"] == 1
    assert len(results) == 3
    assert results[0]["similarity"] == max(r["similarity"] for r in results)
    for r in results:  # greedy: score = u + cos (similarity_weight 1)
        assert r["score"] == pytest.approx(r["utility"] + r["similarity"], abs=1e-5)
    assert doc["settings"]["exploration"] == 0.0

    doc = run_json(capsys, "library", "search", "--run", run, "wash", "the", "plate", "in", "water", "-k", "4",
                   *extra)
    assert doc["query"] == "wash the plate in water"
    results = doc["results"]
    closest = max(results, key=lambda r: r["similarity"])
    assert closest["skill_id"] == ids["sink"]
    if tag == "iter-1":  # equal utilities: the closest skill ranks first
        assert results[0]["skill_id"] == ids["sink"]
    else:  # at the head the microwave skill's utility (0.8 vs 0.1) outweighs the similarity gap
        assert results[0]["skill_id"] == ids["microwave"] and closest["rank"] > 1

    rc, out, _ = run_cli(capsys, "library", "search", "--run", run, "heat food in the microwave", *extra)
    assert rc == 0 and ids["microwave"] in out


# ---- diff --------------------------------------------------------------------------------------
def test_diff(built, capsys):
    run, ids = built
    doc = run_json(capsys, "library", "diff", "--run", run, "iter-1", "iter-2")
    assert {s["id"] for s in doc["added"]} == {ids["fridge"], ids["drawer"]}
    assert [s["id"] for s in doc["retired"]] == [ids["lamp"]]
    assert doc["merged"] == {ids["microwave"]: [ids["merged_draft"]]}
    changes = {c["id"]: c for c in doc["utility_changes"]}
    assert set(changes) == {ids["microwave"], ids["sink"]}
    mw = changes[ids["microwave"]]
    assert (mw["u_from"], mw["u_to"], mw["uses_from"], mw["uses_to"]) == (pytest.approx(0.2), pytest.approx(0.8), 0, 2)
    assert doc["utility_changes"][0]["id"] == ids["microwave"]  # largest |du| first

    head = run_json(capsys, "library", "diff", "--run", run, "iter-1")  # B defaults to the head (= iter-2)
    assert head["to"]["ref"] == "head" and head["to"]["version"] == doc["to"]["version"]
    assert {s["id"] for s in head["added"]} == {ids["fridge"], ids["drawer"]}

    rc, out, _ = run_cli(capsys, "library", "diff", "--run", run, "iter-1", "iter-2")
    assert rc == 0
    for section in ("Added (2)", "Merged into (1)", "Retired (1)", "Utility changes (2"):
        assert section in out
    assert ids["fridge"] in out and ids["lamp"] in out and "+0.600" in out


# ---- export ------------------------------------------------------------------------------------
def test_export(built, capsys, tmp_path):
    run, ids = built
    rc, out, _ = run_cli(capsys, "library", "export", "--run", run, "--tag", "iter-1")
    path = run / "library-iter-1.jsonl"
    assert rc == 0 and str(path) in out and "3 skills" in out
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert {r["id"] for r in rows} == {ids["microwave"], ids["sink"], ids["lamp"]}
    assert all("vector" not in r for r in rows)

    doc = run_json(capsys, "library", "export", "--run", run)  # head, retired included
    assert doc["path"] == str(run / "library-head.jsonl") and doc["rows"] == 5
    assert len(Path(doc["path"]).read_text().splitlines()) == 5

    out_file = tmp_path / "active.jsonl"
    doc = run_json(capsys, "library", "export", "--run", run, "--out", out_file, "--active-only", "--with-vectors")
    assert doc["rows"] == 4
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {r["id"] for r in rows} == {ids["microwave"], ids["sink"], ids["fridge"], ids["drawer"]}
    assert all(len(r["vector"]) == 384 for r in rows)


# ---- restore -----------------------------------------------------------------------------------
class _Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool):
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_restore_with_yes(fresh, capsys):
    run, ids = fresh
    before = run_json(capsys, "library", "ls", "--run", run)
    doc = run_json(capsys, "library", "restore", "--run", run, "iter-1", "--yes")
    assert doc["head_version"] > doc["previous_head_version"] >= before[-1]["version"]
    head = run_json(capsys, "library", "show", "--run", run, "--all")
    skills = {s["id"]: s for s in head["skills"]}
    assert set(skills) == {ids["microwave"], ids["sink"], ids["lamp"]}
    assert all(s["status"] == "active" for s in skills.values())
    assert skills[ids["microwave"]]["utility"] == pytest.approx(0.2)
    assert run_json(capsys, "library", "ls", "--run", run) == before  # tags untouched

    rc, out, _ = run_cli(capsys, "library", "restore", "--run", run, str(before[-1]["version"]), "--yes")
    assert rc == 0 and "head is now version" in out
    assert run_json(capsys, "library", "show", "--run", run)["total"] == 4


def test_restore_asks_on_a_tty_and_refuses_without_one(fresh, capsys, monkeypatch):
    run, ids = fresh
    head = run_json(capsys, "library", "show", "--run", run)

    monkeypatch.setattr(sys, "stdin", _Stdin("", tty=False))
    assert_one_line_error(*run_cli(capsys, "library", "restore", "--run", run, "iter-1"), "--yes")

    monkeypatch.setattr(sys, "stdin", _Stdin("n\n", tty=True))
    assert_one_line_error(*run_cli(capsys, "library", "restore", "--run", run, "iter-1"), "cancelled",
                          prompted=True)
    assert run_json(capsys, "library", "show", "--run", run) == head  # unchanged

    monkeypatch.setattr(sys, "stdin", _Stdin("y\n", tty=True))
    rc, out, _ = run_cli(capsys, "library", "restore", "--run", run, "iter-1")
    assert rc == 0 and "[y/N]" in out and "restored iter-1" in out
    assert run_json(capsys, "library", "show", "--run", run)["total"] == 3


# ---- errors ------------------------------------------------------------------------------------
def test_errors_are_one_line_exit_2(built, capsys, tmp_path, encoder):
    run, _ = built
    assert_one_line_error(*run_cli(capsys, "library", "ls", "--run", tmp_path / "nope"), "no such run directory")
    bare = tmp_path / "bare"
    bare.mkdir()
    assert_one_line_error(*run_cli(capsys, "library", "show", "--run", bare), "no config.yaml")
    assert_one_line_error(*run_cli(capsys, "library", "show", "--run", run, "--tag", "iter-9"), "iter-9")
    assert_one_line_error(*run_cli(capsys, "library", "show", "--run", run, "--tag", "999"), "999")
    assert_one_line_error(*run_cli(capsys, "library", "diff", "--run", run, "iter-1", "nope"), "nope")
    assert_one_line_error(*run_cli(capsys, "library", "search", "--run", run, "x", "--tag", "nope"), "nope")
    assert_one_line_error(*run_cli(capsys, "library", "restore", "--run", run, "nope", "--yes"), "nope")
    assert_one_line_error(*run_cli(capsys, "library", "export", "--run", run, "--tag", "nope"), "nope")
    assert_one_line_error(*run_cli(capsys, "library", "export", "--run", run, "--out", tmp_path / "no" / "f.jsonl"),
                          "no such directory")

    # a run without a library, and one whose library has no skills yet
    from skill1.library import SkillLibrary

    save_config(load_config(None, []), bare / "config.yaml")
    assert_one_line_error(*run_cli(capsys, "library", "ls", "--run", bare), "no skill library")
    SkillLibrary.open(str(bare / "library"), encoder.name, encoder.dim)
    for cmd in (["ls"], ["show"], ["search", "heat food"]):
        assert_one_line_error(*run_cli(capsys, "library", *cmd, "--run", bare), "empty" if cmd == ["ls"] else "no")


def test_importing_the_cli_does_not_import_lancedb():
    code = ("import sys, skill1.cli; skill1.cli.build_parser(); "
            "bad = [m for m in ('lancedb', 'torch', 'skill1.library.store') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["library", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("ls", "show", "search", "diff", "restore", "export"):
        assert cmd in out


# ---- what a run directory may hold: not a library, terminal escapes, another encoder ------------------------------
def test_reading_commands_never_create_a_table_where_there_is_no_library(tmp_path, capsys):
    run = tmp_path / "notalib"
    (run / "library").mkdir(parents=True)
    (run / "library" / "notes.txt").write_text("someone's files, not a LanceDB table")
    save_config(load_config(None, []), run / "config.yaml")
    for cmd in (["ls"], ["show"], ["export"]):
        assert_one_line_error(*run_cli(capsys, "library", *cmd, "--run", run), "is not a skill library")
    assert [p.name for p in (run / "library").iterdir()] == ["notes.txt"]


def test_skill_text_reaches_the_terminal_without_control_sequences(fresh, capsys, encoder, monkeypatch):
    import skill1.algo.skill_intake as intake
    from skill1.library import SkillLibrary

    run, _ = fresh
    lib = SkillLibrary.open(str(run / "library"), encoder.name, encoder.dim)
    evil = SkillDraft("heat \x1b[2J\x1b]0;pwned\x07an egg\x9b31m", "open \x1b[31mthe\x1b[0m microwave\u202e\x07")
    add = dict(iteration=3, source_tasks=["t"], source_episodes=["e"], initial_utility=9.0)  # the top skill
    assert lib.add([evil], encoder.encode([evil.scenario]), **add).rejected == [(0, "control_chars")]
    # a library written before skills were checked (or by another tool): the terminal still gets none of it
    monkeypatch.setattr(intake, "field_fault", lambda text: None)
    lib.add([evil], encoder.encode([evil.scenario]), **add)
    lib.tag("iter-3")  # (LanceDB allows only [A-Za-z0-9._-] in tag names)
    outputs = [run_cli(capsys, "library", *cmd, "--run", run)[1] for cmd in
               (["show", "--top", "1"], ["search", "heat an egg", "-k", "1"], ["diff", "iter-2"], ["ls"])]
    for out in outputs:
        assert not any(c in out for c in "\x1b\x07\x9b\u202e"), repr(out)
    assert "heat an egg" in outputs[0] and "open the microwave" in outputs[0] and "iter-3" in outputs[3]
    assert "\\u001b" in run_cli(capsys, "library", "show", "--top", "1", "--run", run, "--json")[1]  # JSON escapes


def test_a_library_of_another_encoder_stops_train_before_ray_starts(tmp_path, capsys, monkeypatch):
    """As `skill1 library` does on open: `train --resume` names both encoders in one line, and no actor starts."""
    import skill1.loop.train
    from skill1.library import SkillLibrary

    started: list = []  # Ray may be up already (the suite shares one local instance): watch the trainer's start
    monkeypatch.setattr(skill1.loop.train, "init_ray", lambda cfg: started.append(cfg))

    run = tmp_path / "other-encoder-run"
    run.mkdir()
    save_config(load_config(None, ["name=other-encoder-run", f"output_dir={tmp_path}"]), run / "config.yaml")
    SkillLibrary.open(str(run / "library"), "some-other-encoder", 8)
    assert_one_line_error(*run_cli(capsys, "train", "--resume", run), "library.encoder",
                          "'some-other-encoder'", "'all-MiniLM-L6-v2'")
    assert not started
