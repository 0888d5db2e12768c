"""Algorithms: PPO, DQN, APPO, IMPALA (import their modules directly)."""
