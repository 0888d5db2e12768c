"""The default actor-critic MLP module (PPO, APPO, IMPALA).

``fcnet_hiddens``/``fcnet_activation`` build the policy trunk; the value
function has its own trunk of the same shape unless ``vf_share_layers``.
Discrete actions get logits; Box actions a mean plus a free
(state-independent) log-std.
"""
from __future__ import annotations

import torch
from gymnasium import spaces
from torch import nn

from zray.rllib.core.distribution import dist_input_size
from zray.rllib.core.models import mlp
from zray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule


class DefaultActorCriticModule(TorchRLModule):
    def setup(self) -> None:
        mc = dict(self.model_config or {})
        hiddens = mc.get("fcnet_hiddens", [256, 256])
        act = mc.get("fcnet_activation", "tanh")
        obs_dim = int(self.observation_space.shape[0])
        self.share = bool(mc.get("vf_share_layers", False))
        self.box = isinstance(self.action_space, spaces.Box)
        n_out = dist_input_size(self.action_space) // (2 if self.box else 1)
        self.encoder, width = mlp(obs_dim, hiddens, act)
        self.pi_head, _ = mlp(width, mc.get("head_fcnet_hiddens", []),
                              mc.get("head_fcnet_activation", "relu"), n_out, out_gain=0.01)
        if self.box:
            self.log_std = nn.Parameter(torch.zeros(n_out))
        if not self.share:
            self.vf_encoder, vwidth = mlp(obs_dim, hiddens, act)
        else:
            vwidth = width
        self.vf_head, _ = mlp(vwidth, [], act, 1, out_gain=1.0)

    def _dist_inputs(self, features):
        out = self.pi_head(features)
        if self.box:
            out = torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        return out

    def _forward(self, batch, **kwargs):
        return {"action_dist_inputs": self._dist_inputs(self.encoder(batch["obs"]))}

    def _forward_train(self, batch, **kwargs):
        features = self.encoder(batch["obs"])
        out = {"action_dist_inputs": self._dist_inputs(features)}
        vf_features = features if self.share else self.vf_encoder(batch["obs"])
        out["vf_preds"] = self.vf_head(vf_features).squeeze(-1)
        return out

    def compute_values(self, batch, **kwargs):
        obs = batch["obs"]
        features = self.encoder(obs) if self.share else self.vf_encoder(obs)
        return self.vf_head(features).squeeze(-1)
