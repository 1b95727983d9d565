"""Frozen features of an ImageSet: evaluation view only (scale + normalise), no augmentation."""

from __future__ import annotations

import torch
from torch import nn

from replearn.data.imageset import ImageSet
from replearn.dist import native_bf16
from replearn.views import eval_view


def _bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "32", "bf16"):
        raise ValueError(f"precision must be auto, 32 or bf16, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data: ImageSet, batch_size: int = 512, device: torch.device | str | None = None,
    precision: str = "32",
) -> torch.Tensor:
    """Encoder outputs (N, D) float32 on the CPU, in the ImageSet's order; eval mode for the pass.

    ``precision="32"`` runs the encoder as it is (what training-time callers use: the k-NN
    monitor, clustering refreshes). ``"auto"`` (evaluation, embeddings, the report) converts the
    encoder to channels_last, oneDNN's and cuDNN's fast layout (in place), and runs it under bf16
    autocast where the device computes bf16 natively (``dist.native_bf16``); ``"bf16"`` always.
    The demo encoder on Fashion-MNIST's 70k images, 2 cores with AVX512-BF16: 24.4 s as it is,
    13.1 s channels_last, 5.0 s with bf16 too; kNN 83.52 -> 83.45.
    """
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    fast = precision != "32"
    autocast = _bf16(precision, device)
    if fast:
        encoder.to(memory_format=torch.channels_last)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for start in range(0, len(data), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(data)))
                x = eval_view(data.batch(idx).to(device, non_blocking=True), data.mean, data.std)
                if fast and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def raw_pixels(data: ImageSet, batch_size: int = 4096) -> torch.Tensor:
    """The raw-pixel baseline's features: pixels scaled to [0, 1], flattened (N, C*H*W)."""
    return torch.cat(
        [data.batch(torch.arange(s, min(s + batch_size, len(data)))).flatten(1).float() / 255 for s in range(0, len(data), batch_size)]
    )
