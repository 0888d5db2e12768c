from zray.rllib.algorithms.ppo.ppo import PPO, PPOConfig, PPOLearner

__all__ = ["PPO", "PPOConfig", "PPOLearner"]
