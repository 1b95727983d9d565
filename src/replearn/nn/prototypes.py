"""Prototypes: a bias-free linear layer over L2-normalised features (SwAV's C, DINO's last layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Prototypes(nn.Module):
    """``n`` prototype vectors of ``dim``; ``forward`` scores L2-normalised features against them.

    SwAV (arXiv:2006.09882) uses the rows as they are and renormalises them after each optimiser
    step (``normalize_``), so a score is the cosine between a feature and a prototype. With
    ``weight_norm`` the rows are normalised inside ``forward`` instead, so the gradient flows
    through the normalisation: DINO's weight-normalised last layer with its gain fixed to 1
    (``norm_last_layer``, arXiv:2104.14294). Scores are computed in float32, also under autocast.
    """

    def __init__(self, dim: int, n: int, weight_norm: bool = False):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(n, dim) / dim**0.5, dim=1))
        self.weight_norm = weight_norm

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """x (N, dim) -> scores (N, n) in float32. ``frozen``: the weight stays in the graph (DDP
        expects a gradient for every parameter) but receives a zero gradient."""
        w = self.weight
        if frozen:
            w = w.detach() + 0.0 * w
        with torch.autocast(x.device.type, enabled=False):
            w = F.normalize(w.float(), dim=1) if self.weight_norm else w.float()
            return F.normalize(x.float(), dim=1) @ w.T

    @torch.no_grad()
    def normalize_(self) -> None:
        """Rescale every row to unit length (SwAV: after each step, so scores stay cosines)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))
