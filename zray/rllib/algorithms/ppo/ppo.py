"""PPO (Schulman et al. 2017), clipped surrogate with RLlib's extras.

Per iteration: broadcast weights (one ``zray.put``), every env runner steps
``rollout_fragment_length`` x ``num_envs_per_env_runner`` env steps and
returns numpy arrays with its value predictions; GAE turns them into
advantages and value targets; the learner group runs ``num_epochs`` passes
of shuffled minibatches of

    loss = -min(r A, clip(r, 1-eps, 1+eps) A)
           + vf_loss_coeff * min((V - V_target)^2, vf_clip_param)
           - entropy_coeff * H  [+ kl_coeff * KL(old || new) if use_kl_loss]

with r = pi(a|s) / pi_old(a|s); kl_coeff adapts toward kl_target.
"""
from __future__ import annotations

import numpy as np
import torch

from zray.rllib.algorithms.algorithm import Algorithm
from zray.rllib.algorithms.algorithm_config import AlgorithmConfig
from zray.rllib.core.distribution import make_dist
from zray.rllib.core.learner.learner import Learner
from zray.rllib.core.rl_module.default_actor_critic import DefaultActorCriticModule
from zray.rllib.utils.postprocessing import compute_gae, flatten_time_major


class PPOConfig(AlgorithmConfig):
    TRAINING_KEYS = AlgorithmConfig.TRAINING_KEYS | {
        "lambda_", "use_critic", "use_gae", "use_kl_loss", "kl_coeff", "kl_target",
        "vf_loss_coeff", "entropy_coeff", "clip_param", "vf_clip_param", "lr_schedule",
        "entropy_coeff_schedule", "normalize_advantages"}

    def __init__(self, algo_class=None):
        super().__init__(algo_class or PPO)
        self.lr = 5e-5
        self.train_batch_size_per_learner = 4000
        self.minibatch_size = 128
        self.num_epochs = 30
        self.lambda_ = 1.0
        self.use_critic = True
        self.use_gae = True
        self.use_kl_loss = True
        self.kl_coeff = 0.2
        self.kl_target = 0.01
        self.vf_loss_coeff = 1.0
        self.entropy_coeff = 0.0
        self.clip_param = 0.3
        self.vf_clip_param = 10.0
        self.normalize_advantages = True
        self.lr_schedule = None
        self.entropy_coeff_schedule = None

    def validate(self) -> None:
        super().validate()
        for name in ("clip_param", "vf_clip_param"):
            self._positive(name)
        for name in ("vf_loss_coeff", "entropy_coeff", "kl_coeff"):
            self._positive(name, allow_zero=True)
        if not 0 <= self.lambda_ <= 1:
            from zray.rllib.algorithms.algorithm_config import ConfigError
            raise ConfigError(f"lambda_ must be in [0, 1], got {self.lambda_!r}")


class PPOLearner(Learner):
    def build(self) -> None:
        self.kl_coeff = float(self.config.kl_coeff)

    def compute_loss(self, batch):
        cfg = self.config
        out = self.module.forward_train(batch)
        space = self.module.action_space
        dist = make_dist(space, out["action_dist_inputs"])
        logp = dist.log_prob(batch["actions"])
        ratio = torch.exp(logp - batch["action_logp"])
        adv = batch["advantages"]
        surrogate = torch.min(adv * ratio,
                              adv * ratio.clamp(1 - cfg.clip_param, 1 + cfg.clip_param))
        entropy = dist.entropy().mean()
        vf = out["vf_preds"] if "vf_preds" in out else self.module.compute_values(batch)
        vf_unclipped = (vf - batch["value_targets"]) ** 2
        vf_loss = vf_unclipped.clamp(0, cfg.vf_clip_param).mean()
        loss = -surrogate.mean() + cfg.vf_loss_coeff * vf_loss - cfg.entropy_coeff * entropy
        old = make_dist(space, batch["action_dist_inputs"])
        kl = old.kl(dist).mean()
        if cfg.use_kl_loss:
            loss = loss + self.kl_coeff * kl
        with torch.no_grad():
            var = torch.var(batch["value_targets"])
            explained = 1 - torch.var(batch["value_targets"] - vf) / var if var > 0 \
                else torch.tensor(float("nan"))
        return loss, {"total_loss": loss.item(), "policy_loss": -surrogate.mean().item(),
                      "vf_loss": vf_loss.item(), "vf_loss_unclipped": vf_unclipped.mean().item(),
                      "vf_explained_var": float(explained), "entropy": entropy.item(),
                      "mean_kl_loss": kl.item(), "curr_kl_coeff": self.kl_coeff}

    def update_kl(self, mean_kl: float) -> float:
        """RLlib's adaptive KL coefficient; returns the new coefficient."""
        if mean_kl > 2.0 * self.config.kl_target:
            self.kl_coeff *= 1.5
        elif mean_kl < 0.5 * self.config.kl_target:
            self.kl_coeff *= 0.5
        return self.kl_coeff

    def extra_state(self):
        return {"kl_coeff": self.kl_coeff}

    def set_extra_state(self, state):
        self.kl_coeff = state.get("kl_coeff", self.kl_coeff)


class PPO(Algorithm):
    learner_class = PPOLearner
    default_module_class = DefaultActorCriticModule
    runner_computes_values = True

    @classmethod
    def get_default_config(cls):
        return PPOConfig()

    def training_step(self) -> dict:
        cfg = self.config
        samples = self.env_runner_group.sample(
            self.learner_group.get_weights(), num_steps=cfg.get_rollout_fragment_length(),
            explore=cfg.explore)
        self._record(samples)
        parts = []
        for s in samples:
            b = s["batch"]
            adv, targets = compute_gae(b["rewards"], b["vf_preds"], b["next_vf_preds"],
                                       b["terminateds"], b["truncateds"], cfg.gamma, cfg.lambda_)
            parts.append(flatten_time_major({
                "obs": b["obs"], "actions": b["actions"], "action_logp": b["action_logp"],
                "action_dist_inputs": b["action_dist_inputs"], "advantages": adv,
                "value_targets": targets.astype(np.float32)}))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if cfg.normalize_advantages:
            a = batch["advantages"]
            batch["advantages"] = ((a - a.mean()) / (a.std() + 1e-8)).astype(np.float32)
        stats = self.learner_group.update(batch, cfg.minibatch_size, cfg.num_epochs, self.rng)
        if cfg.use_kl_loss and "mean_kl_loss" in stats:
            self.learner_group.foreach("update_kl", stats["mean_kl_loss"])
        stats["num_env_steps_trained"] = len(batch["obs"])
        return stats
