"""The built-in, procedurally generated household environment (ALFWorld-like, pure Python)."""

from skill1.envs.builtin.household import HouseholdEnv, HouseholdTaskSource, expert_actions
from skill1.envs.builtin.world import FAMILIES

__all__ = ["FAMILIES", "HouseholdEnv", "HouseholdTaskSource", "expert_actions"]
