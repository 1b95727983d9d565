"""Projection and prediction heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(dims: Sequence[int], norm_layer: type[nn.Module] | None = nn.BatchNorm1d, last_norm: bool = False) -> nn.Sequential:
    """Linear layers through ``dims`` with norm + ReLU between them (none after the last unless
    ``last_norm``); bias is dropped where a norm follows."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        norm = norm_layer is not None and (not last or last_norm)
        layers.append(nn.Linear(a, b, bias=not norm))
        if norm:
            layers.append(norm_layer(b))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def projection_head(in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> nn.Sequential:
    """SimCLR's projection g(.): Linear-BN-ReLU-Linear, "a MLP with one hidden layer" (arXiv:2002.05709)."""
    return mlp([in_dim, hidden_dim, out_dim])
