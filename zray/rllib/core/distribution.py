"""Action distributions from ``action_dist_inputs``: Categorical for Discrete,
diagonal Gaussian (mean, log-std concatenated) for Box."""
from __future__ import annotations

import torch
from gymnasium import spaces


class DiagGaussian:
    def __init__(self, inputs: torch.Tensor):
        mean, log_std = torch.chunk(inputs, 2, dim=-1)
        self.dist = torch.distributions.Normal(mean, torch.exp(log_std.clamp(-20, 2)))
        self.mean = mean

    def sample(self):
        return self.dist.sample()

    def log_prob(self, actions):
        return self.dist.log_prob(actions).sum(-1)

    def entropy(self):
        return self.dist.entropy().sum(-1)

    def kl(self, other: "DiagGaussian"):
        return torch.distributions.kl_divergence(self.dist, other.dist).sum(-1)

    def deterministic(self):
        return self.mean


class Categorical:
    def __init__(self, logits: torch.Tensor):
        self.dist = torch.distributions.Categorical(logits=logits)
        self.logits = logits

    def sample(self):
        return self.dist.sample()

    def log_prob(self, actions):
        return self.dist.log_prob(actions.long())

    def entropy(self):
        return self.dist.entropy()

    def kl(self, other: "Categorical"):
        return torch.distributions.kl_divergence(self.dist, other.dist)

    def deterministic(self):
        return self.logits.argmax(-1)


def make_dist(action_space, inputs: torch.Tensor):
    """The distribution for ``action_space`` parameterised by ``inputs``."""
    if isinstance(action_space, spaces.Discrete):
        return Categorical(inputs)
    return DiagGaussian(inputs)


def dist_input_size(action_space) -> int:
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    return 2 * int(action_space.shape[0])
