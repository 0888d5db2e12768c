from zray.rllib.algorithms.impala.impala import IMPALA, IMPALAConfig, IMPALALearner

__all__ = ["IMPALA", "IMPALAConfig", "IMPALALearner"]
