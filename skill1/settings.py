"""The config, read into the settings each piece takes: every config → settings adapter lives here, so a
piece never reads the whole config and no two places read the same keys differently."""

from __future__ import annotations

from skill1.algo.advantages import CreditSettings
from skill1.config import Skill1Config
from skill1.types import EnvFaultPolicy, EpisodeSettings, RetrievalSettings, Stage


def episode_settings(cfg: Skill1Config, training: bool) -> EpisodeSettings:
    """The stages an episode plays and their token budgets; no distillation in evaluation."""
    algo, rollout = cfg.algorithm.effective(), cfg.rollout
    return EpisodeSettings(
        use_library=algo.use_library, enable_query_generation=algo.enable_query_generation,
        enable_rerank=algo.enable_rerank, enable_distillation=algo.enable_distillation and training,
        max_steps=cfg.env.max_steps, history_length=cfg.env.history_length,
        max_skill_chars=cfg.library.max_skill_chars,
        max_new_tokens={Stage.QUERY: rollout.max_new_tokens_query, Stage.RERANK: rollout.max_new_tokens_rerank,
                        Stage.ACT: rollout.max_new_tokens_act, Stage.DISTILL: rollout.max_new_tokens_distill},
        constrain_actions=rollout.constrain_actions)


def retrieval_settings(cfg: Skill1Config, training: bool) -> RetrievalSettings:
    """UCB exploration while training, greedy (exploration 0) in evaluation."""
    lib = cfg.library
    return RetrievalSettings(lib.top_k, lib.top_m, lib.exploration if training else 0.0, lib.similarity_weight)


def fault_policy(cfg: Skill1Config) -> EnvFaultPolicy:
    return EnvFaultPolicy(cfg.env.step_timeout_s, cfg.env.max_env_retries)


def credit_settings(cfg: Skill1Config) -> CreditSettings:
    """The preset's switches (a preset turns credit terms off, never on) and the library's u-hat."""
    algo = cfg.algorithm.effective()
    return CreditSettings(
        normalize_std=algo.normalize_std, selection_on=algo.selection_credit, distillation_on=algo.distillation_credit,
        lambda_rerank=algo.lambda_rerank, lambda_distill=algo.lambda_distill,
        u_hat_aggregation=cfg.library.u_hat_aggregation, selection_credit_type=algo.selection_credit_type,
        intrinsic_coefficient=algo.intrinsic_coefficient, intrinsic_group_norm=algo.intrinsic_group_norm,
        singleton_group=algo.singleton_group_advantage)
