"""Similarity losses of the negative-free methods (BYOL, SimSiam), as pure functions of tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -p/|p| . z/|z| (arXiv:2011.10566, eq. 1), the mean over rows; in [-1, 1].
    It does not stop gradients: the caller passes ``z.detach()`` where the method needs it."""
    return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z) (arXiv:2006.07733, eq. 2), the mean over rows;
    in [0, 4]."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z.float(), dim=1)
    return (p - z).pow(2).sum(1).mean()


def symmetric(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
) -> torch.Tensor:
    """Each view's prediction against the other view's target: (loss(p1, z2) + loss(p2, z1)) / 2.
    (BYOL sums the two terms; the mean keeps the value in the single loss's range.)"""
    return (loss(p1, z2) + loss(p2, z1)) / 2
