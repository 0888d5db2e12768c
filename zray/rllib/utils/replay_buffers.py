"""Replay for DQN: a uniform ring buffer of numpy columns, a proportional
prioritized one (a sum tree over the same ring), and n-step transitions whose
``n`` may be drawn per sampled item (RLlib's ``n_step=(lo, hi)``)."""
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

    def add(self, batch: dict) -> np.ndarray:
        """Append the rows of ``batch`` (overwriting the oldest when full);
        returns the slots they went to."""
        n = len(next(iter(batch.values())))
        if not self.cols:
            self.cols = {k: np.empty((self.capacity,) + np.asarray(v).shape[1:],
                                     np.asarray(v).dtype) for k, v in batch.items()}
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, v in batch.items():
            self.cols[k][idx] = v
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)
        return idx

    def sample(self, n: int) -> dict:
        idx = self.rng.integers(0, self.size, n)
        return {k: v[idx] for k, v in self.cols.items()}

    def update_priorities(self, indices, td_errors) -> None:
        """Uniform replay has no priorities (no-op)."""


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): slot i is drawn
    with probability p_i^alpha / sum_j p_j^alpha, p = |TD error| + eps; new
    rows get the highest priority seen so far. ``sample`` adds the columns
    ``weights`` ((N P(i))^-beta, divided by the largest weight any stored
    row could get -- the lowest-priority one's -- as RLlib and Schaul et al.
    normalise, so weights are at most 1 and a batch of high-priority rows
    weighs less than 1) and ``indices`` (to pass back to
    ``update_priorities``)."""

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-6, seed=None):
        super().__init__(capacity, seed)
        self.alpha, self.beta, self.eps = float(alpha), float(beta), float(eps)
        self.leaves = 1 << max(0, (self.capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves)          # tree[1] = total, leaves at [L, 2L)
        self.max_priority = 1.0

    def _set(self, idx: np.ndarray, values: np.ndarray) -> None:
        pos = np.asarray(idx) + self.leaves
        self.tree[pos] = values
        pos = np.unique(pos // 2)
        while True:
            self.tree[pos] = self.tree[2 * pos] + self.tree[2 * pos + 1]
            if pos[0] <= 1:
                return
            pos = np.unique(pos // 2)

    def add(self, batch: dict) -> np.ndarray:
        idx = super().add(batch)
        if len(idx):
            self._set(idx, np.full(len(idx), self.max_priority ** self.alpha))
        return idx

    def sample(self, n: int) -> dict:
        total = self.tree[1]
        # stratified: one draw in each of n equal slices of the total priority
        target = (np.arange(n) + self.rng.random(n)) * (total / n)
        node = np.ones(n, np.int64)
        while node[0] < self.leaves:
            left = 2 * node
            left_sum = self.tree[left]
            right = target > left_sum
            target = np.where(right, target - left_sum, target)
            node = np.where(right, left + 1, left)
        idx = np.minimum(node - self.leaves, self.size - 1)
        probs = np.maximum(self.tree[idx + self.leaves], 1e-12) / total
        weights = (self.size * probs) ** -self.beta
        p_min = max(float(self.tree[self.leaves:self.leaves + self.size].min()), 1e-12) / total
        max_weight = (self.size * p_min) ** -self.beta
        out = {k: v[idx] for k, v in self.cols.items()}
        out["weights"] = np.minimum(weights / max_weight, 1.0).astype(np.float32)
        out["indices"] = idx
        return out

    def update_priorities(self, indices, td_errors) -> None:
        p = np.abs(np.asarray(td_errors, np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self._set(np.asarray(indices), p ** self.alpha)


class NStepAccumulator:
    """Turns per-step transitions of many envs (keyed by (runner, env)) into
    transitions that carry up to ``n`` following steps: ``reward_seq`` [n]
    (zero-padded), ``next_obs_seq`` [n, ...] and ``terminated_seq`` [n]
    (padded with their last entry) and ``seq_len`` (< n only where the
    episode ended first). ``nstep_targets`` turns them into k-step ones."""

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = int(n), gamma
        self.queues: dict = {}

    def add_fragment(self, runner: int, batch: dict) -> dict:
        """``batch`` time-major [T, N] from one runner; returns the transitions
        now complete, as flat columns."""
        out = {k: [] for k in ("obs", "actions", "reward_seq", "next_obs_seq",
                               "terminated_seq", "seq_len")}
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
        if not out["obs"]:
            return {}
        return {k: np.asarray(v) for k, v in out.items()}

    def _emit(self, q: deque, out: dict) -> None:
        steps = list(q)
        pad = self.n - len(steps)
        out["obs"].append(steps[0][0])
        out["actions"].append(steps[0][1])
        out["reward_seq"].append(np.asarray([s[2] for s in steps] + [0.0] * pad, np.float32))
        out["next_obs_seq"].append(np.stack([s[3] for s in steps] + [steps[-1][3]] * pad))
        out["terminated_seq"].append(np.asarray([s[4] for s in steps] + [steps[-1][4]] * pad,
                                                bool))
        out["seq_len"].append(len(steps))
        q.popleft()


def nstep_targets(batch: dict, n, gamma: float, rng: np.random.Generator) -> dict:
    """Columns ``obs, actions, rewards, next_obs, terminateds, discounts`` of
    k-step transitions, k = min(n_i, seq_len) where n_i = ``n`` or, for
    ``n = (lo, hi)``, drawn uniformly from [lo, hi] for each row (RLlib's
    semantics). ``rewards`` = sum_j<k gamma^j r_j and ``discounts`` = gamma^k;
    ``weights``/``indices`` pass through."""
    m = len(batch["seq_len"])
    if isinstance(n, (tuple, list)):
        n_i = rng.integers(int(n[0]), int(n[1]) + 1, m)
    else:
        n_i = np.full(m, int(n))
    k = np.minimum(n_i, batch["seq_len"])
    width = batch["reward_seq"].shape[1]
    j = np.arange(width)
    mask = j[None, :] < k[:, None]
    rewards = (batch["reward_seq"] * (gamma ** j)[None, :] * mask).sum(1).astype(np.float32)
    rows = np.arange(m)
    out = {"obs": batch["obs"], "actions": batch["actions"], "rewards": rewards,
           "next_obs": batch["next_obs_seq"][rows, k - 1],
           "terminateds": batch["terminated_seq"][rows, k - 1],
           "discounts": (gamma ** k).astype(np.float32)}
    for extra in ("weights", "indices"):
        if extra in batch:
            out[extra] = batch[extra]
    return out
