"""DQN (Mnih et al. 2015) with double Q (van Hasselt 2016), dueling heads
(Wang 2016), n-step returns and prioritized replay (Schaul et al. 2016).

Each round: env runners step ``rollout_fragment_length`` steps per env
("auto", as in RLlib: the largest ``n_step``) with epsilon-greedy actions
(epsilon decays linearly along the ``epsilon`` schedule, in sampled env
steps); the transitions go to the replay buffer. Once
``num_steps_sampled_before_learning_starts`` steps are in, each round does
``training_intensity``-many updates (default: one, RLlib's "natural" ratio
``train_batch_size / (rollout_fragment_length x envs)``) on samples of
``train_batch_size_per_learner`` transitions, minimising the (importance-
weighted) Huber loss of

    Q(s, a) - [R_k + gamma^k (1 - terminated) Q_target(s_k, argmax_a' Q(s_k, a'))]

(plain max over Q_target without double_q). ``k`` is ``n_step``, or for
``n_step=(lo, hi)`` drawn uniformly from [lo, hi] for every sampled row;
an episode end shortens it. A ``replay_buffer_config`` whose type names
"Prioritized" gets proportional prioritized replay with its ``alpha`` and
``beta`` (0.6, 0.4 by default; priorities are |TD error| + 1e-6); any other
type replays uniformly. The target network copies (tau=1) or tracks (tau<1)
the online one every ``target_network_update_freq`` sampled env steps.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from zray.rllib.algorithms.algorithm import Algorithm
from zray.rllib.algorithms.algorithm_config import AlgorithmConfig, ConfigError
from zray.rllib.core.learner.learner import Learner, TargetNetworkMixin
from zray.rllib.core.models import mlp
from zray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from zray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from zray.rllib.utils.replay_buffers import (NStepAccumulator, PrioritizedReplayBuffer,
                                             ReplayBuffer, nstep_targets)

log = logging.getLogger(__name__)


class DQNConfig(AlgorithmConfig):
    TRAINING_KEYS = AlgorithmConfig.TRAINING_KEYS | {
        "replay_buffer_config", "target_network_update_freq", "tau", "n_step", "double_q",
        "dueling", "num_steps_sampled_before_learning_starts", "epsilon",
        "training_intensity", "td_error_loss_fn", "num_atoms", "v_min", "v_max", "noisy",
        "sigma0", "hiddens", "categorical_distribution_temperature", "store_buffer_in_checkpoints"}

    def __init__(self, algo_class=None):
        super().__init__(algo_class or DQN)
        self.lr = 5e-4
        self.grad_clip = 40.0
        self.train_batch_size_per_learner = 32
        self.rollout_fragment_length = "auto"
        self.replay_buffer_config = {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000}
        self.target_network_update_freq = 500
        self.tau = 1.0
        self.n_step = 1
        self.double_q = True
        self.dueling = True
        self.num_steps_sampled_before_learning_starts = 1000
        self.epsilon = [(0, 1.0), (10000, 0.05)]
        self.training_intensity = None
        self.td_error_loss_fn = "huber"
        self.num_atoms = 1
        self.min_sample_timesteps_per_iteration = 1000
        self.model_config = DefaultModelConfig(fcnet_hiddens=[256], head_fcnet_hiddens=[256])

    def validate(self) -> None:
        super().validate()
        if isinstance(self.n_step, (tuple, list)):
            lo_hi = list(self.n_step)
            if len(lo_hi) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                          and x > 0 for x in lo_hi) or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"n_step must be a positive integer or a range (lo, hi) of "
                                  f"positive integers with lo <= hi, got {self.n_step!r}")
            self.n_step = tuple(lo_hi)
        else:
            self._positive("n_step", integer=True)
        self._positive("target_network_update_freq", allow_zero=True, integer=True)
        self._positive("num_steps_sampled_before_learning_starts", allow_zero=True)
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau!r}")
        if self.num_atoms != 1:
            raise ConfigError("distributional DQN (num_atoms > 1) is not supported; use 1")
        if self.td_error_loss_fn not in ("huber", "mse"):
            raise ConfigError("td_error_loss_fn must be 'huber' or 'mse'")
        cap = (self.replay_buffer_config or {}).get("capacity", 50000)
        if not isinstance(cap, int) or cap < self.train_batch_size_per_learner:
            raise ConfigError(f"replay_buffer_config capacity ({cap!r}) must be an integer of "
                              f"at least train_batch_size_per_learner")
        if isinstance(self.epsilon, (int, float)):
            self.epsilon = [(0, float(self.epsilon))]
        try:
            pts = [(int(t), float(e)) for t, e in self.epsilon]
        except (TypeError, ValueError):
            raise ConfigError(f"epsilon must be a number or [(timestep, value), ...], got "
                              f"{self.epsilon!r}") from None
        if not pts or any(not 0 <= e <= 1 for _, e in pts):
            raise ConfigError("epsilon values must lie in [0, 1]")
        self.epsilon = pts

    def max_n_step(self) -> int:
        return int(self.n_step[1] if isinstance(self.n_step, tuple) else self.n_step)

    def get_rollout_fragment_length(self) -> int:
        """"auto" is the largest n-step (RLlib's DQN), else the value given."""
        if self.rollout_fragment_length == "auto":
            return self.max_n_step()
        return int(self.rollout_fragment_length)

    def epsilon_at(self, t: int) -> float:
        pts = self.epsilon
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, e0), (t1, e1) in zip(pts, pts[1:]):
            if t <= t1:
                return e0 + (e1 - e0) * (t - t0) / max(1, t1 - t0)
        return pts[-1][1]


def _zeros(name) -> bool:
    return str(name or "").rstrip("_") == "zeros"


class DefaultDQNModule(TorchRLModule):
    """MLP trunk (``fcnet_hiddens``), then either one Q head or dueling
    value/advantage heads (``head_fcnet_hiddens``). ``action_dist_inputs``
    are the Q-values (greedy action = argmax). Weights start as RLlib's DQN
    module's do (torch's ``nn.Linear`` default); biases too, unless
    ``fcnet_bias_initializer`` / ``head_fcnet_bias_initializer`` is
    ``"zeros_"`` (RLlib's tuned CartPole example)."""

    def setup(self) -> None:
        mc = dict(self.model_config or {})
        obs_dim = int(self.observation_space.shape[0])
        n = int(self.action_space.n)
        self.dueling = bool(mc.get("dueling", True))
        self.encoder, width = mlp(obs_dim, mc.get("fcnet_hiddens", [256]),
                                  mc.get("fcnet_activation", "tanh"), init="torch",
                                  zero_bias=_zeros(mc.get("fcnet_bias_initializer")))
        head, head_act = mc.get("head_fcnet_hiddens", []), mc.get("head_fcnet_activation", "relu")
        head_zero = _zeros(mc.get("head_fcnet_bias_initializer"))
        self.adv_head, _ = mlp(width, head, head_act, n, init="torch", zero_bias=head_zero)
        if self.dueling:
            self.value_head, _ = mlp(width, head, head_act, 1, init="torch",
                                     zero_bias=head_zero)

    def _forward(self, batch, **kwargs):
        z = self.encoder(batch["obs"])
        adv = self.adv_head(z)
        if self.dueling:
            q = self.value_head(z) + adv - adv.mean(-1, keepdim=True)
        else:
            q = adv
        return {"action_dist_inputs": q, "q_values": q}


class DQNLearner(TargetNetworkMixin, Learner):
    def build(self) -> None:
        self.target = copy.deepcopy(self.module)
        self.target.requires_grad_(False)
        self.last_td_errors = None

    def pop_td_errors(self):
        """The per-row |TD errors| of the last loss (for replay priorities)."""
        td, self.last_td_errors = self.last_td_errors, None
        return td

    def compute_loss(self, batch):
        cfg = self.config
        n = len(batch["obs"])
        if cfg.double_q:
            # one forward pass of the online net over obs and next obs (same result)
            q_both = self.module.forward_train(
                {"obs": torch.cat([batch["obs"], batch["next_obs"]])})["q_values"]
            q, best = q_both[:n], q_both[n:].detach().argmax(1)
        else:
            q = self.module.forward_train(batch)["q_values"]
        q_taken = q.gather(1, batch["actions"].long().unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            q_next_target = self.target.forward_train({"obs": batch["next_obs"]})["q_values"]
            if not cfg.double_q:
                best = q_next_target.argmax(1)
            q_next = q_next_target.gather(1, best.unsqueeze(1)).squeeze(1)
            target = batch["rewards"] + batch["discounts"] * \
                (1.0 - batch["terminateds"].float()) * q_next
        td = q_taken - target
        per_row = (F.smooth_l1_loss(q_taken, target, reduction="none")
                   if cfg.td_error_loss_fn == "huber" else F.mse_loss(q_taken, target,
                                                                      reduction="none"))
        weights = batch.get("weights")
        loss = (per_row * weights).mean() if weights is not None else per_row.mean()
        self.last_td_errors = td.detach().abs().numpy()
        return loss, {"qf_loss": loss.item(), "qf_mean": q_taken.mean().item(),
                      "td_error_mean": td.abs().mean().item()}


class DQN(Algorithm):
    learner_class = DQNLearner
    default_module_class = DefaultDQNModule
    exploration = "epsilon_greedy"
    discrete_actions_only = True

    @classmethod
    def get_default_config(cls):
        return DQNConfig()

    def _module_spec(self, obs_space, act_space):
        spec = super()._module_spec(obs_space, act_space)
        if spec.module_class is DefaultDQNModule:
            spec.model_config = dict(spec.model_config, dueling=self.config.dueling)
        return spec

    def setup(self) -> None:
        cfg = self.config
        rb = dict(cfg.replay_buffer_config or {})
        if "Prioritized" in str(rb.get("type", "")):
            self.buffer = PrioritizedReplayBuffer(
                rb.get("capacity", 50000),
                alpha=rb.get("alpha", rb.get("prioritized_replay_alpha", 0.6)),
                beta=rb.get("beta", rb.get("prioritized_replay_beta", 0.4)),
                eps=rb.get("prioritized_replay_eps", 1e-6), seed=cfg.seed)
        else:
            self.buffer = ReplayBuffer(rb.get("capacity", 50000), seed=cfg.seed)
        self.nstep = NStepAccumulator(cfg.max_n_step(), cfg.gamma)
        self._last_target_update = 0

    def training_step(self) -> dict:
        cfg = self.config
        eps = cfg.epsilon_at(self.lifetime_steps)
        samples = self.env_runner_group.sample(
            self.learner_group.get_weights(), num_steps=cfg.get_rollout_fragment_length(),
            explore=cfg.explore, epsilon=eps)
        self._record(samples)
        sampled = 0
        for s in samples:
            trans = self.nstep.add_fragment(s["worker_index"], s["batch"])
            if trans:
                self.buffer.add(trans)
            sampled += s["num_env_steps"]
        if self.lifetime_steps < cfg.num_steps_sampled_before_learning_starts:
            return {}
        bs = cfg.train_batch_size_per_learner
        updates = 1 if not cfg.training_intensity else \
            max(1, round(sampled * cfg.training_intensity / bs))
        stats = {}
        for _ in range(updates):
            batch = nstep_targets(self.buffer.sample(bs), cfg.n_step, cfg.gamma, self.rng)
            indices = batch.pop("indices", None)
            stats = self.learner_group.update(batch, bs, 1, self.rng)
            if indices is not None:
                td = [t for t in self.learner_group.foreach("pop_td_errors") if t is not None]
                self.buffer.update_priorities(indices, np.concatenate(td))
        if self.lifetime_steps - self._last_target_update >= cfg.target_network_update_freq:
            self.learner_group.foreach("update_target", cfg.tau)
            self._last_target_update = self.lifetime_steps
        stats["num_env_steps_trained"] = updates * bs
        stats["epsilon"] = eps
        stats["replay_buffer_size"] = len(self.buffer)
        return stats

    def get_algo_state(self):
        return dict(super().get_algo_state(), last_target_update=self._last_target_update)

    def set_algo_state(self, state):
        super().set_algo_state(state)
        self._last_target_update = state.get("last_target_update", 0)
