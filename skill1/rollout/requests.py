"""What a rollout request takes from the config: retrieval settings and the environment fault policy.

Shared by training (both schedules) and evaluation, so neither imports the other for them.
"""

from __future__ import annotations

from skill1.config import Skill1Config
from skill1.library.retrieval import RetrievalSettings
from skill1.rollout.worker import EnvFaultPolicy


def fault_policy(cfg: Skill1Config) -> EnvFaultPolicy:
    return EnvFaultPolicy(cfg.env.step_timeout_s, cfg.env.max_env_retries)


def retrieval_settings(cfg: Skill1Config, training: bool) -> RetrievalSettings:
    """UCB exploration while training, greedy (exploration 0) in evaluation."""
    lib = cfg.library
    return RetrievalSettings(lib.top_k, lib.top_m, lib.exploration if training else 0.0, lib.similarity_weight)
