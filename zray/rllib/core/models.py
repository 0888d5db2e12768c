"""The MLP every default module is built from."""
from __future__ import annotations

from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU,
                "elu": nn.ELU, "linear": None, None: None}


def activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of "
                         f"{sorted(k for k in _ACTIVATIONS if k)}")
    return _ACTIVATIONS[name]


def mlp(in_size: int, hiddens, act: str, out_size: int | None = None,
        out_gain: float = 1.0) -> tuple[nn.Sequential, int]:
    """Linear layers of ``hiddens`` with ``act`` between them, then an optional
    output layer (orthogonal init, small gain for policy heads). Returns the
    network and its output width."""
    layers, size = [], in_size
    act_cls = activation(act)
    for h in hiddens:
        lin = nn.Linear(size, h)
        nn.init.orthogonal_(lin.weight, gain=2 ** 0.5)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if act_cls is not None:
            layers.append(act_cls())
        size = h
    if out_size is not None:
        lin = nn.Linear(size, out_size)
        nn.init.orthogonal_(lin.weight, gain=out_gain)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        size = out_size
    return nn.Sequential(*layers), size
