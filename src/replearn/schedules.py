"""Schedules as pure functions of training progress, shared by pretraining and semi-supervised
training: learning-rate factors for ``LambdaLR`` and the ramp-ups of loss weights."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then the half cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fixmatch_cosine(step: int, total: int) -> float:
    """FixMatch's learning-rate decay cos(7 pi k / (16 K)): from 1 to about 0.2 at the end."""
    return math.cos(7 * math.pi * min(step, total) / (16 * max(1, total)))


def sigmoid_ramp(progress: float, length: float) -> float:
    """The sigmoid ramp-up exp(-5 (1 - t)^2), t = progress / length clipped to [0, 1] (Laine &
    Aila; Mean Teacher): 0.0067 at the start, 1 from ``length`` on."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, progress / length))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_ramp(progress: float, length: float) -> float:
    """The linear ramp-up min(1, progress / length) of MixMatch and ReMixMatch; 1 when ``length`` <= 0."""
    return min(1.0, max(0.0, progress / length)) if length > 0 else 1.0
