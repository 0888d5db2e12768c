from zray.rllib.algorithms.appo.appo import APPO, APPOConfig, APPOLearner

__all__ = ["APPO", "APPOConfig", "APPOLearner"]
