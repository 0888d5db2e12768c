from zray.rllib.algorithms.dqn.dqn import DQN, DQNConfig, DQNLearner, DefaultDQNModule

__all__ = ["DQN", "DQNConfig", "DQNLearner", "DefaultDQNModule"]
