"""Which encoder a library directory was built with, read before Ray starts.

`skill1 train --resume` must refuse a library built with another encoder before any actor exists (the CLI's
`skill1 library` does so on open). The driver may not import LanceDB yet (Ray and wandb fork after it, which is
unsafe: see `skill1.library`), so the table's schema metadata is read in a short-lived child interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from skill1.config import ConfigError

_READ_META = """
import json, sys
import lancedb
try:
    tbl = lancedb.connect(sys.argv[1]).open_table(sys.argv[2])
except ValueError:  # no such table
    print("null")
else:
    meta = tbl.schema.metadata or {}
    print(json.dumps({k.decode(): v.decode(errors="replace") for k, v in meta.items()}))
"""


def stored_encoder(library_dir: str | Path, table: str = "skills", timeout_s: float = 300) -> tuple[str, str] | None:
    """(encoder name, dim) the skill table under `library_dir` was built with; None when there is no table."""
    path = Path(library_dir)
    if not path.is_dir() or not any(path.iterdir()):
        return None
    proc = subprocess.run([sys.executable, "-c", _READ_META, str(path), table], capture_output=True, text=True,
                          timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"library: cannot read the skill library at {path}: {last}")
    meta = json.loads(lines[-1])
    if meta is None:
        return None
    return meta.get("encoder_name", "<none>"), meta.get("dim", "<none>")


def check_library_encoder(library_dir: str | Path, encoder_name: str) -> None:
    """A one-line `ConfigError` when the library under `library_dir` was built with an encoder other than
    `encoder_name` (the dimension is checked again when the library is opened)."""
    stored = stored_encoder(library_dir)
    if stored is not None and stored[0] != str(encoder_name):
        raise ConfigError(f"library.encoder: the skill library at {library_dir} was built with encoder {stored[0]!r} "
                          f"(dim {stored[1]}), not {encoder_name!r}: continue it with the encoder it was built with")
