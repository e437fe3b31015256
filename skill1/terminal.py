"""Text that is safe to print and tables that fit the console, for the `skill1` commands.

Skill texts are model output, and tag names and paths come from a run directory someone else may have made:
everything printed goes through `plain` first.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict

# Skill texts are model output, and tag names and paths come from a run directory someone else may have made:
# an ANSI escape in them would recolour, retitle, hide or rewrite what the terminal shows; C1 controls and
# bidi overrides reorder it. Escape sequences go whole, then any other control character (whitespace is left
# for the callers, which collapse it).
_TERMINAL_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor moves, erase)
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (window title, hyperlinks, clipboard)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS / SOS / PM / APC strings
    r"|\x1b[ -/]*[0-~]?"  # any other escape (and a lone ESC)
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|[\x00-\x08\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def plain(text) -> str:
    """`text` without terminal control sequences or control characters: safe to print."""
    return _TERMINAL_CONTROL.sub("", str(text))


FANCY = {"...": "…", "->": "→", "du": "Δu", "*": "·"}
sym = dict(FANCY)  # what the tables print; plain ASCII when stdout cannot encode these


def make_console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)  # piped: don't squeeze tables into 80 columns
    ascii_only = not console.encoding.lower().startswith("utf")
    sym.update({k: k if ascii_only else v for k, v in FANCY.items()})
    if ascii_only and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # skill texts may hold any character
    return console


NUM = "num"  # a right-aligned column, never truncated
SCENARIO_CHARS, STRATEGY_CHARS, IDS_CHARS = 48, 64, 40  # text columns: at most this wide, less if narrow


class Grid:
    """A rich table whose text columns (scenario, strategy) give way first: each row stays on one line,
    ids and numbers are never cut, and the long texts are cut with an ellipsis to fit the console."""

    def __init__(self, title: str, *columns: str | tuple[str, str | int]):
        self.title, self.caption = title, None
        self.columns = [(c, None) if isinstance(c, str) else c for c in columns]
        self.rows: list[tuple[list[str], str | None]] = []

    def add(self, *cells, style: str | None = None) -> None:
        self.rows.append(([" ".join(plain(c).split()) for c in cells], style))

    def print(self, console) -> None:
        from rich.table import Table
        from rich.text import Text  # cells as Text: skill texts are never read as rich markup

        natural = [max([len(h)] + [len(r[k]) for r, _ in self.rows]) for k, (h, _) in enumerate(self.columns)]
        caps = {k: min(natural[k], spec) for k, (_, spec) in enumerate(self.columns) if isinstance(spec, int)}
        fixed = sum(w for k, w in enumerate(natural) if k not in caps) + 3 * len(self.columns) + 1
        room = console.width - fixed  # what the text columns may take together
        if caps and sum(caps.values()) > room:
            total = sum(caps.values())
            caps = {k: max(min(8, w), w * room // total) for k, w in caps.items()}
        table = Table(title=Text(plain(self.title)), title_justify="left",
                      caption=Text(plain(self.caption)) if self.caption else None, caption_justify="left")
        for k, (header, spec) in enumerate(self.columns):
            if k in caps:
                table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=caps[k])
            else:
                table.add_column(header, no_wrap=True, justify="right" if spec == NUM else "left")
        for cells, style in self.rows:
            table.add_row(*[Text(short(c, caps[k]) if k in caps else c) for k, c in enumerate(cells)], style=style)
        console.print(table)


def short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    dots = sym["..."]
    return text if len(text) <= n else text[: max(n - len(dots), 0)] + dots


def print_json(doc) -> None:
    print(json.dumps(doc, indent=2))


def skill_dict(skill) -> dict:
    d = asdict(skill)
    d.pop("vector", None)
    return d


def mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
