"""DefaultModelConfig: the knobs of the default MLP modules (RLlib's names)."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class DefaultModelConfig:
    """Layer sizes and activations of the default modules. ``fcnet_*`` is the
    shared/policy trunk, ``head_fcnet_*`` the heads after it (DQN's dueling
    heads, the policy and value heads when ``vf_share_layers``). The actor-
    critic modules (PPO, APPO, IMPALA) start with orthogonal weights and zero
    biases whatever the ``*_initializer`` keys say (they are accepted so
    RLlib's examples run); DQN's starts as RLlib's does (torch's default
    init, zero biases only where a ``*_bias_initializer`` is ``"zeros_"``)."""
    fcnet_hiddens: list = dataclasses.field(default_factory=lambda: [256, 256])
    fcnet_activation: str = "tanh"
    fcnet_kernel_initializer: Optional[str] = None
    fcnet_bias_initializer: Optional[str] = None
    head_fcnet_hiddens: list = dataclasses.field(default_factory=list)
    head_fcnet_activation: str = "relu"
    head_fcnet_kernel_initializer: Optional[str] = None
    head_fcnet_bias_initializer: Optional[str] = None
    vf_share_layers: bool = False
    free_log_std: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DefaultModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model_config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)
