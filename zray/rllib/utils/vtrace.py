"""V-trace targets (Espeholt et al. 2018) on time-major tensors [T, N].

Like GAE here, each step carries its own next-state value, so episode ends
inside a fragment cut the trace: terminated steps bootstrap with 0,
truncated ones with the value of their final observation.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def vtrace(log_rhos, rewards, values, next_values, terminateds, truncateds, gamma: float,
           clip_rho: float = 1.0, clip_pg_rho: float = 1.0, clip_c: float = 1.0):
    """Returns (vs, pg_advantages), both [T, N]. ``log_rhos`` = log pi(a|s) -
    log mu(a|s) of the policy being evaluated over the behaviour policy."""
    rhos = torch.exp(log_rhos)
    clipped_rhos = rhos.clamp(max=clip_rho)
    cs = rhos.clamp(max=clip_c)
    not_term = 1.0 - terminateds.float()
    not_done = 1.0 - (terminateds | truncateds).float()
    deltas = clipped_rhos * (rewards + gamma * not_term * next_values - values)
    T = rewards.shape[0]
    acc = torch.zeros_like(values[0])
    vs_minus_v = torch.zeros_like(values)
    for t in range(T - 1, -1, -1):
        acc = deltas[t] + gamma * not_done[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    # v-trace target of the next state: vs_{t+1} inside an episode, else V(final obs).
    next_vs = next_values.clone()
    next_vs[:-1] = next_values[:-1] + not_done[:-1] * vs_minus_v[1:]
    pg_adv = rhos.clamp(max=clip_pg_rho) * (rewards + gamma * not_term * next_vs - values)
    return vs, pg_adv
