"""The rollout worker's event-loop state: an episode attempt in progress, and a call in flight."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass


@dataclass
class LiveEpisode:
    """One running attempt of an episode."""

    job: int  # the request it belongs to
    index: int  # position in the request
    attempt: int
    gen: Generator
    pool: int
    sampler: int
    slot: int  # unique per attempt: a restarted attempt never sees its predecessor's environment
    key: int = -1
    request: object = None
    dispatched: bool = False
    has_env: bool = False
    min_version: int | None = None  # oldest weights version that generated for it


@dataclass
class PendingCall:
    actor: tuple[str, int]  # ("sampler" | "pool" | "rejoin", index)
    members: list[tuple[int, int]]  # (live episode key, attempt)
    deadline: float = float("inf")
    sent: float = 0.0
