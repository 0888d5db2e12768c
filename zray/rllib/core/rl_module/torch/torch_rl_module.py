"""TorchRLModule: an ``nn.Module`` with RLlib's three forward passes.

Subclass it, build layers in ``setup()`` and implement ``_forward`` (used by
all three passes) or ``_forward_inference`` / ``_forward_exploration`` /
``_forward_train``. Each takes a dict batch (``"obs"``: a float tensor
[B, obs_dim]) and returns a dict with ``"action_dist_inputs"`` (logits for
Discrete actions; mean and log-std concatenated for Box actions). A module
may also return ``"actions"`` (and ``"action_logp"``) to choose actions itself.
PPO/APPO/IMPALA modules must implement ``compute_values(batch) -> [B]``.
"""
from __future__ import annotations

import torch
from torch import nn


class TorchRLModule(nn.Module):
    framework = "torch"

    def __init__(self, *, observation_space=None, action_space=None, inference_only=False,
                 model_config=None, **kwargs):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.inference_only = inference_only
        self.model_config = model_config if model_config is not None else {}
        self.setup()

    def setup(self) -> None:
        """Build the layers (override)."""

    # RLlib's public passes; override the underscored ones.
    def forward_inference(self, batch: dict, **kwargs) -> dict:
        """Greedy acting (no exploration); called under ``torch.no_grad``."""
        return self._forward_inference(batch, **kwargs)

    def forward_exploration(self, batch: dict, **kwargs) -> dict:
        """Acting while sampling (exploration); called under ``torch.no_grad``."""
        return self._forward_exploration(batch, **kwargs)

    def forward_train(self, batch: dict, **kwargs) -> dict:
        """The learner's pass, with autograd."""
        return self._forward_train(batch, **kwargs)

    def _forward(self, batch: dict, **kwargs) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement _forward (or each of "
                                  f"_forward_inference/_forward_exploration/_forward_train)")

    def _forward_inference(self, batch, **kwargs):
        return self._forward(batch, **kwargs)

    def _forward_exploration(self, batch, **kwargs):
        return self._forward(batch, **kwargs)

    def _forward_train(self, batch, **kwargs):
        return self._forward(batch, **kwargs)

    def forward(self, batch: dict, **kwargs) -> dict:
        return self.forward_train(batch, **kwargs)

    # Weights as numpy (what travels through the object store).
    def get_state(self) -> dict:
        """A copy of the weights as numpy arrays (what travels through the store)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def set_state(self, state: dict) -> None:
        self.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
