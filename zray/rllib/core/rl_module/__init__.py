"""RL modules: the networks env runners act with and learners train."""
from zray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec

__all__ = ["RLModule", "RLModuleSpec"]
