"""Generalized advantage estimation on time-major arrays [T, N].

Each step carries its own next-state value (``next_values``), so episode
ends inside a fragment are exact: a terminated step bootstraps with 0, a
truncated one with the value of its final observation.
"""
from __future__ import annotations

import numpy as np


def compute_gae(rewards, values, next_values, terminateds, truncateds, gamma: float,
                lambda_: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets (advantages + values), both [T, N]."""
    T = rewards.shape[0]
    not_term = 1.0 - terminateds.astype(np.float32)
    not_done = 1.0 - np.logical_or(terminateds, truncateds).astype(np.float32)
    deltas = rewards + gamma * next_values * not_term - values
    adv = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1:], np.float32)
    for t in range(T - 1, -1, -1):
        last = deltas[t] + gamma * lambda_ * not_done[t] * last
        adv[t] = last
    return adv, adv + values


def flatten_time_major(batch: dict) -> dict:
    """[T, N, ...] -> [T*N, ...] for every array."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
