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
        out_gain: float = 1.0, init: str = "orthogonal",
        zero_bias: bool = True) -> tuple[nn.Sequential, int]:
    """Linear layers of ``hiddens`` with ``act`` between them, then an optional
    output layer. ``init="orthogonal"``: orthogonal weights (gain sqrt 2, the
    output layer ``out_gain``: small for policy heads); ``init="torch"``:
    torch's ``nn.Linear`` default (RLlib's when no kernel initializer is
    configured). Biases start at zero if ``zero_bias``, else torch's default.
    Returns the network and its output width."""
    if init not in ("orthogonal", "torch"):
        raise ValueError(f"unknown init {init!r}; use 'orthogonal' or 'torch'")
    layers, size = [], in_size
    act_cls = activation(act)

    def linear(n_in, n_out, gain):
        lin = nn.Linear(n_in, n_out)
        if init == "orthogonal":
            nn.init.orthogonal_(lin.weight, gain=gain)
        if zero_bias:
            nn.init.zeros_(lin.bias)
        return lin

    for h in hiddens:
        layers.append(linear(size, h, 2 ** 0.5))
        if act_cls is not None:
            layers.append(act_cls())
        size = h
    if out_size is not None:
        layers.append(linear(size, out_size, out_gain))
        size = out_size
    return nn.Sequential(*layers), size
