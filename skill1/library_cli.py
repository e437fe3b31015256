"""`skill1 library ls | show | search | diff | restore | export` — inspect (and restore) a run's skill library.

Every command takes `--run RUN_DIR` (a directory made by `skill1 train`: `config.yaml` + `library/`) and
`--json` (one JSON document on stdout, for scripts); otherwise it prints rich tables. A snapshot argument is
a tag name (`iter-3`) or, when all digits, a table version number; no argument means the head.

LanceDB is imported only inside the command functions (through `skill1.library`'s lazy exports): a process
that imported it must never fork, and `skill1.cli` is imported by the `train` command, which starts Ray.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from skill1.config import load_config
from skill1.terminal import (IDS_CHARS, NUM, SCENARIO_CHARS, STRATEGY_CHARS, Grid, fmt, make_console, mean, plain,
                             print_json, skill_dict, sym)

SORT_KEYS = ("utility", "uses", "created")


class CommandError(Exception):
    """A user-facing failure: `skill1` prints `error: <message>` on one line and exits with status 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(plain(message).split()))


# ---- opening a run's library ------------------------------------------------------------------
@lru_cache(maxsize=4)
def _encoder(name: str):
    """The run's encoder, built once per process (loading it is the slow part of every command)."""
    from skill1.library import Encoder

    try:
        return Encoder(name)
    except (FileNotFoundError, OSError) as e:
        raise CommandError(f"cannot load the run's encoder {name!r}: {e}") from e


class _Run:
    """A run directory: its config, its encoder and its head library (opened on first use)."""

    def __init__(self, run: str):
        self.dir = Path(run)
        if not self.dir.is_dir():
            raise CommandError(f"--run: no such run directory: {run}")
        if not (self.dir / "config.yaml").is_file():
            raise CommandError(f"--run: {run} has no config.yaml (is it a run directory made by skill1 train?)")
        self.cfg = load_config(self.dir / "config.yaml")
        self.library_dir = self.dir / "library"
        if not self.library_dir.is_dir() or not any(self.library_dir.iterdir()):
            raise CommandError(f"--run: {run} has no skill library ({self.library_dir} is missing or empty)")
        self._lib = None

    @property
    def encoder(self):
        return _encoder(self.cfg.library.encoder)

    @property
    def lib(self):
        if self._lib is None:
            from skill1.library import LibraryEncoderMismatch, LibraryNotFound, SkillLibrary

            try:  # never create: these commands only read (restore writes a version of an existing table)
                self._lib = SkillLibrary.open(str(self.library_dir), self.encoder.name, self.encoder.dim,
                                              create=False)
            except LibraryNotFound as e:
                raise CommandError(f"--run: {e}") from e
            except LibraryEncoderMismatch as e:
                raise CommandError(str(e)) from e
        return self._lib


def parse_ref(ref: str | None) -> int | str | None:
    """A snapshot argument: None (head), an all-digit version number, or a tag name."""
    if ref is None:
        return None
    ref = ref.strip()
    if not ref:
        raise CommandError("empty snapshot name: give a tag (e.g. iter-3) or a version number")
    return int(ref) if ref.isascii() and ref.isdigit() else ref


def _checked(fn, *args, **kwargs):
    """Call a library method; an unknown tag or version (ValueError) becomes a one-line CommandError."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise CommandError(str(e)) from e


class _View:
    """One snapshot of the library: the head (ref None) or a read-only checkout of a tag or version."""

    def __init__(self, run: _Run, ref: int | str | None):
        self.ref = ref
        self.lib = run.lib if ref is None else _checked(run.lib.checkout, ref)
        self.version = self.lib.version
        self.tags = sorted(t for t, v in run.lib.tags().items() if v == self.version)

    @property
    def label(self) -> str:
        if self.ref is None:
            return f"head (version {self.version})"
        if isinstance(self.ref, str):
            return f"{self.ref} (version {self.version})"
        return f"version {self.version}" + (f" ({', '.join(self.tags)})" if self.tags else "")

    def describe(self) -> dict:
        return {"ref": "head" if self.ref is None else self.ref, "version": self.version, "tags": self.tags}


# ---- commands ---------------------------------------------------------------------------------
def library_ls(args) -> None:
    run = _Run(args.run)
    lib = run.lib
    tags = sorted(lib.tags().items(), key=lambda kv: (kv[1], kv[0]))
    if not tags and lib.size(active_only=False) == 0:
        raise CommandError(f"the skill library of {args.run} is empty (no skills, no snapshots yet)")
    rows = []
    for tag, version in tags:
        skills = lib.checkout(version).all_skills(active_only=True)
        rows.append({"tag": tag, "version": version, "active_skills": len(skills),
                     "mean_utility": mean(s.utility for s in skills), "total_uses": sum(s.uses for s in skills)})
    if args.json:
        print_json(rows)
        return
    table = Grid(f"Skill library snapshots of {args.run}", "tag", ("version", NUM), ("active skills", NUM),
                  ("mean utility", NUM), ("total uses", NUM))
    for r in rows:
        table.add(r["tag"], r["version"], r["active_skills"], fmt(r["mean_utility"]), r["total_uses"])
    table.caption = f"head: version {lib.version}, {lib.size()} active skills"
    table.print(make_console())


def _sorted_skills(skills: list, key: str) -> list:
    if key == "utility":
        return sorted(skills, key=lambda s: (-s.utility, -s.uses, s.id))
    if key == "uses":
        return sorted(skills, key=lambda s: (-s.uses, -s.utility, s.id))
    return sorted(skills, key=lambda s: (-s.created_iteration, s.id))  # created: newest first


def library_show(args) -> None:
    run = _Run(args.run)
    view = _View(run, parse_ref(args.tag))
    skills = view.lib.all_skills(active_only=not args.all)
    if not skills:
        what = "skills" if args.all else "active skills"
        raise CommandError(f"the skill library of {args.run} has no {what} at {view.label}")
    ordered = _sorted_skills(skills, args.sort)
    shown = ordered if args.top <= 0 else ordered[: args.top]
    if args.json:
        print_json({"run": str(run.dir), "snapshot": view.describe(), "sort": args.sort, "include_retired": args.all,
               "total": len(skills), "skills": [skill_dict(s) for s in shown]})
        return
    table = Grid(f"Skills at {view.label}, by {args.sort}", "id", ("u", NUM), ("n", NUM), ("wins", NUM),
                  ("created", NUM), "status", ("scenario", SCENARIO_CHARS), ("strategy", STRATEGY_CHARS))
    for s in shown:
        table.add(s.id, f"{s.utility:.3f}", s.uses, s.wins, s.created_iteration, s.status, s.scenario, s.strategy,
                  style="dim" if s.status != "active" else None)
    table.caption = f"{len(shown)} of {len(skills)} {'skills' if args.all else 'active skills'}" + (
        "" if len(shown) == len(skills) else " (--top N for more, --top 0 for all)")
    table.print(make_console())


def library_search(args) -> None:
    from skill1.library.retrieval import retrieve
    from skill1.types import RetrievalSettings

    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    query = " ".join(args.query).strip()
    if not query:
        raise CommandError("empty query")
    run = _Run(args.run)
    view = _View(run, parse_ref(args.tag))
    active = view.lib.all_skills(active_only=True)
    if not active:
        raise CommandError(f"the skill library of {args.run} has no active skills at {view.label}")
    lc = run.cfg.library  # greedy, as in evaluation: u + w * cos over the cosine top-m
    settings = RetrievalSettings(top_k=args.k, top_m=max(lc.top_m, 16, args.k), exploration=0.0,
                                 similarity_weight=lc.similarity_weight)
    hits = retrieve(view.lib, run.encoder, [query], settings, sum(s.uses for s in active))[0]
    if args.json:
        print_json({"run": str(run.dir), "snapshot": view.describe(), "query": query,
               "settings": asdict(settings), "results": [dict(rank=i + 1, **asdict(c)) for i, c in enumerate(hits)]})
        return
    console = make_console()
    table = Grid(f"{query!r} at {view.label}: greedy score = u + {settings.similarity_weight:g}{sym['*']}cos",
                  ("rank", NUM), "id", ("score", NUM), ("cos", NUM), ("u", NUM), ("n", NUM),
                  ("scenario", SCENARIO_CHARS), ("strategy", STRATEGY_CHARS))
    for i, c in enumerate(hits):
        table.add(i + 1, c.skill_id, f"{c.score:.3f}", f"{c.similarity:.3f}", f"{c.utility:.3f}", c.uses,
                  c.scenario, c.strategy)
    table.print(console)


def library_diff(args) -> None:
    run = _Run(args.run)
    a, b = parse_ref(args.a), parse_ref(args.b)
    va, vb = _View(run, a), _View(run, b)  # resolves both first: unknown names fail with one line
    d = _checked(run.lib.diff, a, b)
    changes = sorted(d.utility_changes, key=lambda c: (-abs(c[2] - c[1]), c[0]))
    merged_ids = sorted(d.merged, key=lambda i: (-len(d.merged[i]), i))
    if args.json:
        print_json({"run": str(run.dir), "from": va.describe(), "to": vb.describe(),
               "added": [skill_dict(s) for s in d.added], "retired": [skill_dict(s) for s in d.retired],
               "merged": {i: list(d.merged[i]) for i in merged_ids},
               "utility_changes": [{"id": i, "u_from": uf, "u_to": ut, "uses_from": nf, "uses_to": nt}
                                   for i, uf, ut, nf, nt in changes]})
        return
    console, top = make_console(), args.top if args.top > 0 else None
    console.print(plain(f"Skill library diff: {va.label} {sym['->']} {vb.label}: {len(d.added)} added, "
                        f"{len(d.merged)} merged into, {len(d.retired)} retired, {len(d.utility_changes)} utility "
                        f"changes"), markup=False)

    def more(n_all: int) -> str | None:
        return None if top is None or n_all <= top else f"{top} of {n_all} (--top N, or --json for all)"

    def skills_table(title: str, skills: list) -> None:
        t = Grid(title, "id", ("u", NUM), ("n", NUM), ("created", NUM), ("scenario", SCENARIO_CHARS),
                  ("strategy", STRATEGY_CHARS))
        for s in skills[:top]:
            t.add(s.id, f"{s.utility:.3f}", s.uses, s.created_iteration, s.scenario, s.strategy)
        t.caption = more(len(skills))
        t.print(console)

    if d.added:
        skills_table(f"Added ({len(d.added)})", _sorted_skills(d.added, "utility"))
    if d.merged:
        survivors = {s.id: s for s in vb.lib.all_skills(active_only=False)}
        t = Grid(f"Merged into ({len(d.merged)})", "id", ("new parents", NUM), ("parent ids", IDS_CHARS),
                  ("scenario", SCENARIO_CHARS))
        for i in merged_ids[:top]:
            s = survivors.get(i)
            t.add(i, len(d.merged[i]), ", ".join(d.merged[i]), s.scenario if s else "")
        t.caption = more(len(merged_ids))
        t.print(console)
    if d.retired:
        skills_table(f"Retired ({len(d.retired)})", _sorted_skills(d.retired, "utility"))
    if changes:
        du = sym["du"]
        t = Grid(f"Utility changes ({len(changes)}, largest |{du}| first)", "id", ("u from", NUM), ("u to", NUM),
                  (du, NUM), ("n from", NUM), ("n to", NUM))
        for i, uf, ut, nf, nt in changes[:top]:
            t.add(i, f"{uf:.3f}", f"{ut:.3f}", f"{ut - uf:+.3f}", nf, nt)
        t.caption = more(len(changes))
        t.print(console)
    if not (d.added or d.merged or d.retired or changes):
        console.print("no differences")


def _confirm(prompt: str) -> bool:
    try:
        answer = input(plain(prompt))
    except (EOFError, KeyboardInterrupt):
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def library_restore(args) -> None:
    run = _Run(args.run)
    ref = parse_ref(args.ref)
    target = _View(run, ref)
    lib = run.lib
    head_version, head_size = lib.version, lib.size()
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("restore changes the run's library head: pass --yes to confirm "
                               "(stdin is not a terminal, so there is no one to ask)")
        prompt = (f"Restore {target.label}: {target.lib.size()} active skills.\n"
                  f"The current head (version {head_version}, {head_size} active skills) stays reachable as "
                  f"version {head_version}.\nMake {target.label} the head of {run.library_dir}? [y/N] ")
        if not _confirm(prompt):
            raise CommandError("restore cancelled; the library is unchanged")
    new_version = _checked(lib.restore, ref)
    if args.json:
        print_json({"run": str(run.dir), "restored": target.describe(), "previous_head_version": head_version,
               "head_version": new_version, "active_skills": lib.size()})
        return
    print(plain(f"restored {target.label}: the head is now version {new_version} with {lib.size()} active skills "
                f"(previous head: version {head_version}; undo with: skill1 library restore --run {args.run} "
                f"{head_version} --yes)"))


def _default_export_name(ref: int | str | None) -> str:
    if ref is None:
        name = "head"
    elif isinstance(ref, int):
        name = f"v{ref}"
    else:
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ref)
    return f"library-{name}.jsonl"


def library_export(args) -> None:
    run = _Run(args.run)
    ref = parse_ref(args.tag)
    view = _View(run, ref)
    out = Path(args.out) if args.out else run.dir / _default_export_name(ref)
    if not out.parent.is_dir():
        raise CommandError(f"--out: no such directory: {out.parent}")
    rows = _checked(run.lib.export, str(out), ref, active_only=args.active_only, with_vectors=args.with_vectors)
    if args.json:
        print_json({"run": str(run.dir), "snapshot": view.describe(), "path": str(out), "rows": rows,
               "active_only": args.active_only, "with_vectors": args.with_vectors})
        return
    print(plain(f"{out}  ({rows} {'active ' if args.active_only else ''}skills from {view.label})"))


# ---- parser -----------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory made by skill1 train")
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")


_SNAPSHOT_HELP = "snapshot: a tag (e.g. iter-3) or a version number (default: the head)"


def _command(lib, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    p = lib.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".")
    _common(p)
    return p


def register(sub) -> None:
    """Add `library` and its sub-commands to the top-level sub-parsers of `skill1`."""
    lib = sub.add_parser(
        "library", help="inspect a run's skill library", description=__doc__.split("\n\n")[1],
    ).add_subparsers(dest="lib_command", required=True, metavar="COMMAND")

    p = _command(lib, "ls", "snapshots (tags): version, active skills, mean utility, total uses")
    p.set_defaults(fn=library_ls)

    p = _command(lib, "show", "the skills of one snapshot")
    p.add_argument("--tag", metavar="TAG_OR_VERSION", help=_SNAPSHOT_HELP)
    p.add_argument("--top", type=int, default=20, metavar="N", help="show the first N (default 20; 0: all)")
    p.add_argument("--sort", choices=SORT_KEYS, default="utility",
                   help="utility (highest first, default), uses (most first), created (newest first)")
    p.add_argument("--all", action="store_true", help="include retired skills")
    p.set_defaults(fn=library_show)

    p = _command(lib, "search", "greedy retrieval (as in evaluation) of a query against one snapshot")
    p.add_argument("query", nargs="+", metavar="QUERY", help="the query text (several words are joined)")
    p.add_argument("--tag", metavar="TAG_OR_VERSION", help=_SNAPSHOT_HELP)
    p.add_argument("-k", type=int, default=3, help="number of results (default 3)")
    p.set_defaults(fn=library_search)

    p = _command(lib, "diff", "what changed between two snapshots: added, merged, retired, utilities")
    p.add_argument("a", metavar="A", help="from: a tag or version number")
    p.add_argument("b", metavar="B", nargs="?", help="to: a tag or version number (default: the head)")
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="rows per section in the tables (default 20; 0: all; --json has all)")
    p.set_defaults(fn=library_diff)

    p = _command(lib, "restore", "make an old snapshot the head (a new version; nothing is deleted)",
                 description="Make an old snapshot the head of the run's library: a new table version "
                             "with that snapshot's rows; every earlier version and tag stays. Do not run it "
                             "while a training run writes to this library.")
    p.add_argument("ref", metavar="TAG_OR_VERSION", help="the snapshot to restore")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (required off a TTY)")
    p.set_defaults(fn=library_restore)

    p = _command(lib, "export", "write one snapshot's skills as JSON lines")
    p.add_argument("--tag", metavar="TAG_OR_VERSION", help=_SNAPSHOT_HELP)
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/library-<tag or head>.jsonl)")
    p.add_argument("--active-only", action="store_true", help="leave out retired skills")
    p.add_argument("--with-vectors", action="store_true", help="include the scenario embeddings")
    p.set_defaults(fn=library_export)
