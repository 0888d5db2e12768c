"""IMPALA (Espeholt et al. 2018): asynchronous sampling, V-trace correction.

Every env runner always has one ``sample`` request in flight; the driver
``zray.wait``s for whichever arrive, relaunches those runners at once with
the newest weights (one ``zray.put`` per round of updates), and cuts what
arrived into train batches of ``train_batch_size_per_learner`` env steps
(whole env rows of ``rollout_fragment_length`` steps; the rest waits for
the next arrival), training on each. Runners may act
with slightly old weights; V-trace corrects for it:

    loss = -log pi(a|s) * rho_pg (r + gamma v_{s'} - V(s))
           + vf_loss_coeff * 0.5 (V(s) - v_s)^2 - entropy_coeff * H

Batches are env-major [N, T, ...] so learners can split them by env.
"""
from __future__ import annotations

import numpy as np
import torch

from zray.rllib.algorithms.algorithm import Algorithm
from zray.rllib.algorithms.algorithm_config import AlgorithmConfig
from zray.rllib.core.distribution import make_dist
from zray.rllib.core.learner.learner import Learner
from zray.rllib.core.rl_module.default_actor_critic import DefaultActorCriticModule
from zray.rllib.utils.vtrace import vtrace

_KEYS = ("obs", "next_obs", "actions", "rewards", "terminateds", "truncateds", "action_logp",
         "action_dist_inputs")


class IMPALAConfig(AlgorithmConfig):
    TRAINING_KEYS = AlgorithmConfig.TRAINING_KEYS | {
        "vtrace", "vtrace_clip_rho_threshold", "vtrace_clip_pg_rho_threshold",
        "vf_loss_coeff", "entropy_coeff", "broadcast_interval", "learner_queue_size",
        "num_gpu_loader_threads", "num_aggregator_actors_per_learner", "lr_schedule",
        "entropy_coeff_schedule"}

    def __init__(self, algo_class=None):
        super().__init__(algo_class or IMPALA)
        self.lr = 5e-4
        self.train_batch_size_per_learner = 500
        self.rollout_fragment_length = 50
        self.num_env_runners = 2
        self.grad_clip = 40.0
        self.vtrace = True
        self.vtrace_clip_rho_threshold = 1.0
        self.vtrace_clip_pg_rho_threshold = 1.0
        self.vf_loss_coeff = 0.5
        self.entropy_coeff = 0.01
        # RLlib's IMPALA/APPO iteration: at least 10 s of asynchronous sampling
        # and training (``.reporting()`` sets it by steps instead)
        self.min_time_s_per_iteration = 10
        self.min_sample_timesteps_per_iteration = 0
        self.minibatch_size = None

    def validate(self) -> None:
        super().validate()
        self._positive("vtrace_clip_rho_threshold")
        self._positive("vtrace_clip_pg_rho_threshold")
        self._positive("vf_loss_coeff", allow_zero=True)


class IMPALALearner(Learner):
    def forward(self, batch):
        """Current-policy log-probs, entropy, values and next values, all [T, N]."""
        N, T = batch["rewards"].shape
        flat = lambda x: x.reshape((N * T,) + x.shape[2:])            # noqa: E731
        tm = lambda x: x.reshape(N, T).transpose(0, 1)                  # noqa: E731
        out = self.module.forward_train({"obs": flat(batch["obs"])})
        dist = make_dist(self.module.action_space, out["action_dist_inputs"])
        logp = tm(dist.log_prob(flat(batch["actions"])))
        values = out["vf_preds"] if "vf_preds" in out else \
            self.module.compute_values({"obs": flat(batch["obs"])})
        with torch.no_grad():
            next_values = self.module.compute_values({"obs": flat(batch["next_obs"])})
        return dist, out, logp, tm(values), tm(next_values), tm

    def compute_loss(self, batch):
        cfg = self.config
        dist, _, logp, values, next_values, tm = self.forward(batch)
        behaviour = tm(batch["action_logp"])
        vs, pg_adv = vtrace(logp.detach() - behaviour, tm(batch["rewards"]), values.detach(),
                            next_values, tm(batch["terminateds"]), tm(batch["truncateds"]),
                            cfg.gamma, cfg.vtrace_clip_rho_threshold,
                            cfg.vtrace_clip_pg_rho_threshold)
        pi_loss = -(logp * pg_adv).mean()
        vf_loss = 0.5 * ((values - vs) ** 2).mean()
        entropy = dist.entropy().mean()
        loss = pi_loss + cfg.vf_loss_coeff * vf_loss - cfg.entropy_coeff * entropy
        return loss, {"total_loss": loss.item(), "policy_loss": pi_loss.item(),
                      "vf_loss": vf_loss.item(), "entropy": entropy.item()}


def env_major(samples: list[dict]) -> dict:
    """Runner fragments [T, N_i, ...] -> one batch [sum N_i, T, ...]."""
    return {k: np.concatenate([np.swapaxes(s["batch"][k], 0, 1) for s in samples])
            for k in _KEYS}


class IMPALA(Algorithm):
    learner_class = IMPALALearner
    default_module_class = DefaultActorCriticModule

    def needs_values(self) -> bool:
        return True

    @classmethod
    def get_default_config(cls):
        return IMPALAConfig()

    def setup(self) -> None:
        self._pending: list[dict] = []
        self._weights = self._weights_ref = None

    def _publish_weights(self) -> None:
        import zray
        self._weights = self.learner_group.get_weights()
        if self.env_runner_group.remote:
            self._weights_ref = zray.put(self._weights)

    def _sample(self) -> list[dict]:
        """Samples that arrived (async with remote runners, sync locally)."""
        cfg = self.config
        kwargs = dict(num_steps=cfg.get_rollout_fragment_length(), explore=cfg.explore)
        if self._weights is None:
            self._publish_weights()
        if not self.env_runner_group.remote:
            return self.env_runner_group.sample(self._weights, **kwargs)
        self.env_runner_group.launch(self._weights_ref, **kwargs)
        return self.env_runner_group.collect_ready(timeout=60.0)

    def learn_on(self, batch: dict) -> dict:
        """One update of the learner group on an env-major batch."""
        cfg = self.config
        T = batch["rewards"].shape[1]
        mb = None if cfg.minibatch_size is None else max(1, cfg.minibatch_size // T)
        return self.learner_group.update(batch, mb, cfg.num_epochs, self.rng)

    def training_step(self) -> dict:
        samples = self._sample()
        self._record(samples)
        if samples:
            self._pending.append(env_major(samples))
        stats, trained = {}, 0
        for batch in self._take_batches():
            stats = self.train_on_batch(batch)
            trained += int(batch["rewards"].size)
        if not trained:
            return {}
        self._publish_weights()
        stats["num_env_steps_trained"] = trained
        return stats

    def _take_batches(self) -> list[dict]:
        """Train batches of ``train_batch_size_per_learner`` env steps (rounded
        to whole env rows) from what arrived; leftover rows stay pending."""
        if not self._pending:
            return []
        pending = {k: np.concatenate([p[k] for p in self._pending]) for k in _KEYS}
        rows, T = pending["rewards"].shape
        per = max(1, round(self.config.train_batch_size_per_learner / T))
        full = rows // per
        batches = [{k: v[i * per:(i + 1) * per] for k, v in pending.items()}
                   for i in range(full)]
        self._pending = [{k: v[full * per:] for k, v in pending.items()}] \
            if rows > full * per else []
        return batches

    def train_on_batch(self, batch: dict) -> dict:
        return self.learn_on(batch)
