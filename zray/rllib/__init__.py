"""zray.rllib: RLlib's new-API-stack names on zray actors.

``from zray.rllib.algorithms.ppo import PPOConfig`` (also ``dqn.DQNConfig``,
``appo.APPOConfig``, ``impala.IMPALAConfig``). Importing this package does not
import torch; the algorithm modules do.
"""
from zray.rllib.env.registry import register_env

__all__ = ["register_env"]
