"""A uniform replay buffer of numpy columns and an n-step accumulator."""
from __future__ import annotations

from collections import deque

import numpy as np


class ReplayBuffer:
    """Ring buffer of transitions; ``sample(n)`` draws uniformly with replacement."""

    def __init__(self, capacity: int, seed=None):
        self.capacity = int(capacity)
        self.cols: dict[str, np.ndarray] = {}
        self.size = 0
        self.pos = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict) -> None:
        n = len(next(iter(batch.values())))
        if not self.cols:
            self.cols = {k: np.empty((self.capacity,) + np.asarray(v).shape[1:],
                                     np.asarray(v).dtype) for k, v in batch.items()}
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, v in batch.items():
            self.cols[k][idx] = v
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int) -> dict:
        idx = self.rng.integers(0, self.size, n)
        return {k: v[idx] for k, v in self.cols.items()}


class NStepAccumulator:
    """Turns per-step transitions of many envs (keyed by (runner, env)) into
    n-step transitions: reward = sum of gamma^i r_i over up to ``n`` steps,
    stopping at an episode end; ``discount`` = gamma^k for the bootstrap."""

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.queues: dict = {}

    def add_fragment(self, runner: int, batch: dict) -> dict:
        """``batch`` time-major [T, N] from one runner; returns the n-step
        transitions now complete, as flat columns."""
        out = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminateds",
                               "discounts")}
        T, N = batch["rewards"].shape
        for e in range(N):
            q = self.queues.setdefault((runner, e), deque())
            for t in range(T):
                q.append((batch["obs"][t, e], batch["actions"][t, e], batch["rewards"][t, e],
                          batch["next_obs"][t, e], batch["terminateds"][t, e],
                          batch["truncateds"][t, e]))
                done = q[-1][4] or q[-1][5]
                if len(q) == self.n or done:
                    while q:
                        self._emit(q, out)
                        if not done:
                            break
        return {k: np.asarray(v) for k, v in out.items()}

    def _emit(self, q: deque, out: dict) -> None:
        obs, act = q[0][0], q[0][1]
        ret, disc = 0.0, 1.0
        for (_, _, r, nxt, term, _trunc) in q:
            ret += disc * r
            disc *= self.gamma
            last_next, last_term = nxt, term
        out["obs"].append(obs)
        out["actions"].append(act)
        out["rewards"].append(np.float32(ret))
        out["next_obs"].append(last_next)
        out["terminateds"].append(bool(last_term))
        out["discounts"].append(np.float32(disc))
        q.popleft()
