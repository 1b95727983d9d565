"""Frozen features of an ImageSet: evaluation view only (scale + normalise), no augmentation."""

from __future__ import annotations

import torch
from torch import nn

from replearn.data.imageset import ImageSet
from replearn.views import eval_view


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data: ImageSet, batch_size: int = 512, device: torch.device | str | None = None
) -> torch.Tensor:
    """Encoder outputs (N, D) float32 on the CPU, in the ImageSet's order; eval mode for the pass."""
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            x = eval_view(data.batch(idx).to(device, non_blocking=True), data.mean, data.std)
            out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def raw_pixels(data: ImageSet, batch_size: int = 4096) -> torch.Tensor:
    """The raw-pixel baseline's features: pixels scaled to [0, 1], flattened (N, C*H*W)."""
    return torch.cat(
        [data.batch(torch.arange(s, min(s + batch_size, len(data)))).flatten(1).float() / 255 for s in range(0, len(data), batch_size)]
    )
