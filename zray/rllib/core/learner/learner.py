"""Learner: one torch module, its optimizer and an algorithm's loss.

An algorithm subclasses ``Learner`` and implements ``compute_loss(batch)``
(tensors in, ``(loss, {stat: float})`` out). Batches arrive as dicts of numpy
arrays. ``update_minibatch`` does one optimizer step; ``compute_gradients`` /
``apply_gradients`` split it for learner groups that average gradients.
A learner sets torch to one thread (in the driver too, for num_learners=0).
"""
from __future__ import annotations

import numpy as np
import torch


class Learner:
    def __init__(self, *, config, module_spec, in_actor: bool = False):
        # One torch thread: the default modules are small MLPs, for which more
        # threads only contend with the env runners (10-20x slower under load).
        torch.set_num_threads(1)
        self.config = config
        self.module = module_spec.build()
        self.module.train()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.build()

    def build(self) -> None:
        """Extra set-up (target networks, coefficients); override."""

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    @staticmethod
    def to_tensors(batch: dict) -> dict:
        # Batches from the object store are read-only views: copy into torch.
        return {k: torch.tensor(v) for k, v in batch.items()}

    def _backward(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = self.compute_loss(self.to_tensors(batch))
        loss.backward()
        return stats

    def _step(self) -> dict:
        stats = {}
        if self.config.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            stats["gradients_default_optimizer_global_norm"] = float(norm)
        self.optimizer.step()
        return stats

    def update_minibatch(self, batch: dict) -> dict:
        """One optimizer step on ``batch``; the loss's stats."""
        stats = self._backward(batch)
        stats.update(self._step())
        return stats

    def compute_gradients(self, batch: dict) -> tuple[list, dict]:
        stats = self._backward(batch)
        grads = [p.grad.numpy().copy() if p.grad is not None else np.zeros(p.shape, np.float32)
                 for p in self.params]
        return grads, stats

    def apply_gradients(self, grads: list) -> dict:
        for p, g in zip(self.params, grads):
            p.grad = torch.as_tensor(np.asarray(g)).clone()
        return self._step()

    def step(self, grads, batch):
        """Apply ``grads`` (if any), then return the gradients on ``batch``:
        one round trip per minibatch for a group of learner actors."""
        if grads is not None:
            self.apply_gradients(grads)
        if batch is None:
            return None
        return self.compute_gradients(batch)

    def get_weights(self) -> dict:
        return self.module.get_state()

    def set_weights(self, weights: dict) -> None:
        self.module.set_state(weights)

    def get_state(self) -> dict:
        """Module and optimizer state (and ``extra_state()``), for checkpoints."""
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "extra": self.extra_state()}

    def set_state(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.set_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass

    def call(self, method: str, *args, **kwargs):
        return getattr(self, method)(*args, **kwargs)


class TargetNetworkMixin:
    """For a learner with a target copy of its module in ``self.target``:
    Polyak updates, and the target saved and restored with checkpoints."""

    def update_target(self, tau: float) -> None:
        """target <- (1 - tau) * target + tau * module (tau=1: a hard copy)."""
        with torch.no_grad():
            for t, s in zip(self.target.parameters(), self.module.parameters()):
                t.mul_(1.0 - tau).add_(s, alpha=tau)

    def extra_state(self):
        return {"target": self.target.state_dict()}

    def set_extra_state(self, state):
        if "target" in state:
            self.target.load_state_dict(state["target"])
