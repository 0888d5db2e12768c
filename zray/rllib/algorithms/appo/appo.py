"""APPO (IMPACT, Luo et al. 2020): IMPALA's asynchronous sampling and
V-trace with PPO's clipped surrogate against a target ("old") network.

Circular buffer (RLlib's semantics): it holds up to
``circular_buffer_num_batches`` (N) train batches; every update trains on a
batch drawn at random from it; a batch leaves once drawn
``circular_buffer_iterations_per_batch`` (K) times, or, being the oldest,
when a new one arrives into a full buffer. Each arriving batch is followed
by K updates, so every batch is trained on K times when the learner keeps up.

    is = clip(mu(a|s) / pi_target(a|s), 0, 2)
    r  = is * pi(a|s) / mu(a|s)                 (= pi / pi_target, bounded)
    loss = -min(r A_vtrace, clip(r, 1-eps, 1+eps) A_vtrace)
           + vf_loss_coeff * 0.5 (V - v_s)^2 - entropy_coeff * H
           [+ kl_coeff * KL(pi_target || pi) if use_kl_loss]

V-trace weights use pi_target / mu. The target network tracks the module
(tau=1: copy) each time ``target_network_update_freq`` x N x K x
``train_batch_size_per_learner`` env steps have been trained on (RLlib's
unit, IMPACT 4.1.1; RLlib's defaults 2, 8, 2: every 32 updates).
"""
from __future__ import annotations

import copy

import torch

from zray.rllib.algorithms.impala.impala import IMPALA, IMPALAConfig, IMPALALearner
from zray.rllib.core.distribution import make_dist
from zray.rllib.core.learner.learner import TargetNetworkMixin
from zray.rllib.utils.vtrace import vtrace


class APPOConfig(IMPALAConfig):
    TRAINING_KEYS = IMPALAConfig.TRAINING_KEYS | {
        "clip_param", "use_kl_loss", "kl_coeff", "kl_target", "target_network_update_freq",
        "tau", "circular_buffer_num_batches", "circular_buffer_iterations_per_batch",
        "target_worker_clipping", "use_critic", "use_gae", "lambda_"}

    def __init__(self, algo_class=None):
        super().__init__(algo_class or APPO)
        self.clip_param = 0.4
        self.use_kl_loss = False
        self.kl_coeff = 1.0
        self.kl_target = 0.01
        self.target_network_update_freq = 2
        self.tau = 1.0
        self.circular_buffer_num_batches = 8
        self.circular_buffer_iterations_per_batch = 2
        self.target_worker_clipping = 2.0
        self.use_critic = True
        self.use_gae = True
        self.lambda_ = 1.0

    def validate(self) -> None:
        super().validate()
        self._positive("clip_param")
        self._positive("circular_buffer_num_batches", integer=True)
        self._positive("circular_buffer_iterations_per_batch", integer=True)
        self._positive("target_network_update_freq")


class APPOLearner(TargetNetworkMixin, IMPALALearner):
    def build(self) -> None:
        self.target = copy.deepcopy(self.module)
        self.target.requires_grad_(False)

    def compute_loss(self, batch):
        cfg = self.config
        dist, out, logp, values, next_values, tm = self.forward(batch)
        N, T = batch["rewards"].shape
        flat_obs = batch["obs"].reshape((N * T,) + batch["obs"].shape[2:])
        with torch.no_grad():
            t_inputs = self.target.forward_train({"obs": flat_obs})["action_dist_inputs"]
            t_dist = make_dist(self.module.action_space, t_inputs)
            t_logp = tm(t_dist.log_prob(batch["actions"].reshape(
                (N * T,) + batch["actions"].shape[2:])))
        behaviour = tm(batch["action_logp"])
        vs, pg_adv = vtrace(t_logp - behaviour, tm(batch["rewards"]), values.detach(),
                            next_values, tm(batch["terminateds"]), tm(batch["truncateds"]),
                            cfg.gamma, cfg.vtrace_clip_rho_threshold,
                            cfg.vtrace_clip_pg_rho_threshold)
        is_ratio = torch.exp(behaviour - t_logp).clamp(0.0, cfg.target_worker_clipping)
        ratio = is_ratio * torch.exp(logp - behaviour)
        surrogate = torch.min(pg_adv * ratio,
                              pg_adv * ratio.clamp(1 - cfg.clip_param, 1 + cfg.clip_param))
        pi_loss = -surrogate.mean()
        vf_loss = 0.5 * ((values - vs) ** 2).mean()
        entropy = dist.entropy().mean()
        kl = t_dist.kl(dist).mean()
        loss = pi_loss + cfg.vf_loss_coeff * vf_loss - cfg.entropy_coeff * entropy
        if cfg.use_kl_loss:
            loss = loss + cfg.kl_coeff * kl
        return loss, {"total_loss": loss.item(), "policy_loss": pi_loss.item(),
                      "vf_loss": vf_loss.item(), "entropy": entropy.item(),
                      "mean_kl_loss": kl.item()}


class APPO(IMPALA):
    learner_class = APPOLearner

    @classmethod
    def get_default_config(cls):
        return APPOConfig()

    def setup(self) -> None:
        super().setup()
        self._buffer: list[list] = []          # [batch, times drawn], oldest first
        self._trained_since_target = 0

    def target_update_period(self) -> float:
        """Trained env steps between target-network updates."""
        cfg = self.config
        return (cfg.target_network_update_freq * cfg.circular_buffer_num_batches
                * cfg.circular_buffer_iterations_per_batch * cfg.train_batch_size_per_learner)

    def train_on_batch(self, batch: dict) -> dict:
        cfg = self.config
        if len(self._buffer) >= cfg.circular_buffer_num_batches:
            self._buffer.pop(0)
        self._buffer.append([batch, 0])
        stats = {}
        for _ in range(cfg.circular_buffer_iterations_per_batch):
            if not self._buffer:
                break
            i = int(self.rng.integers(len(self._buffer)))
            entry = self._buffer[i]
            stats = self.learn_on(entry[0])
            entry[1] += 1
            if entry[1] >= cfg.circular_buffer_iterations_per_batch:
                self._buffer.pop(i)
            self._trained_since_target += int(entry[0]["rewards"].size)
            if self._trained_since_target >= self.target_update_period():
                self.learner_group.foreach("update_target", cfg.tau)
                self._trained_since_target = 0
        return stats
