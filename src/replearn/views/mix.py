"""MixUp as MixMatch uses it (arXiv:1905.02249, eqs. 8-11): per-sample weights lambda' = max(lambda,
1 - lambda) with lambda ~ Beta(alpha, alpha), so every mixed sample stays closer to its first input."""

from __future__ import annotations

import torch


def mix_weights(n: int, alpha: float, g: torch.Generator, device=None) -> torch.Tensor:
    """(n,) weights lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), drawn from ``g``.

    torch's Beta sampler takes no generator, so it runs on the global RNG reseeded from ``g``
    inside ``fork_rng`` (the global state is left as it was): the draw depends on ``g`` alone."""
    if alpha <= 0:
        return torch.ones(n, device=device)
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((n,))
    return torch.maximum(lam, 1 - lam).to(device)


def mixup(
    x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i: lam_i * (x1_i, y1_i) + (1 - lam_i) * (x2_i, y2_i); x (N, ...) inputs, y (N, K) targets."""
    lx = lam.to(x1.dtype).view(-1, *([1] * (x1.dim() - 1)))
    ly = lam.to(y1.dtype).view(-1, 1)
    return lx * x1 + (1 - lx) * x2, ly * y1 + (1 - ly) * y2
