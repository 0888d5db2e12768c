"""Core pieces shared by every algorithm: RL modules and learners."""
