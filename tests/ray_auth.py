"""Ray heads the tests start keep token auth on, as everything we tell users to run does: with
RAY_AUTH_MODE=disabled, Ray's GCS, raylets, workers and the Ray Client server (port 10001) listen on every
interface and take requests, tasks included, from anyone who can reach the machine (cluster/README.md)."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

_DIR: list[str] = []


def _session_dir() -> str:
    if not _DIR:
        _DIR.append(tempfile.mkdtemp(prefix="skill1-ray-token-"))  # 0700
        atexit.register(shutil.rmtree, _DIR[0], True)
    return _DIR[0]


def token_env(directory: str | os.PathLike | None = None, env: dict | None = None) -> dict:
    """`env` (default os.environ) with token auth on and a fresh token of the tests' own in `directory` (default:
    a private temp dir for this test session), mode 0600: not ~/.ray/auth_token, which every user of this home
    shares and a test must not write."""
    path = Path(directory or _session_dir()) / "ray_auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes: 256 random bits
    out = {**(os.environ if env is None else env), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    out.pop("RAY_AUTH_TOKEN", None)  # takes precedence over the path
    return out


def bearer(env: dict) -> dict:
    """The HTTP header for Ray's job/state APIs (what the `ray` CLI sends from RAY_AUTH_TOKEN_PATH)."""
    return {"Authorization": "Bearer " + Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()}
