"""Learners (torch) and the learner group that runs them locally or as actors."""
from zray.rllib.core.learner.learner import Learner
from zray.rllib.core.learner.learner_group import LearnerGroup

__all__ = ["Learner", "LearnerGroup"]
