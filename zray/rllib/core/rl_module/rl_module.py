"""RLModuleSpec: how to build a module (class, spaces, model config).

``RLModule`` is the torch base here (``TorchRLModule``), loaded on first use
so that ``import zray.rllib`` does not import torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class RLModuleSpec:
    """Build a module: ``module_class(observation_space=, action_space=,
    inference_only=, model_config=)``. Unset fields are filled by the
    algorithm (its default module class, the env's spaces, the config's
    ``model_config``)."""
    module_class: Optional[type] = None
    observation_space: Any = None
    action_space: Any = None
    inference_only: bool = False
    model_config: Any = None
    catalog_class: Any = None

    def build(self):
        if self.module_class is None:
            raise ValueError("RLModuleSpec.module_class is not set")
        return self.module_class(observation_space=self.observation_space,
                                 action_space=self.action_space,
                                 inference_only=self.inference_only,
                                 model_config=self.model_config)


def __getattr__(name):
    if name == "RLModule":
        from zray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
        return TorchRLModule
    raise AttributeError(name)
