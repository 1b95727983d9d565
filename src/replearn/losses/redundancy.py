"""Redundancy-reduction losses (Barlow Twins, VICReg) as pure functions of two embeddings.

Both use batch statistics (mean, variance, correlations), so under DDP the embeddings are gathered
from every process with gradients and every process computes the same loss, the loss of the
global batch. Why the gradients then match one process with the global batch: each process's loss
L is the same function of the gathered batch, so each holds the same dL/dZ; the gather's backward
all-reduces (sums) it, giving W * dL/dz_r for the local slice, and DDP divides the parameter
gradients by W, leaving dL/dtheta exactly. (tests/test_dist_barlow_vicreg.py checks it.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn import dist


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The D*(D-1) off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5.1e-3, eps: float = 1e-5, gather: bool = True
) -> torch.Tensor:
    """Barlow Twins (arXiv:2103.03230): sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

    ``z1``, ``z2`` (N, D) are the projections of two views of the same N images. Each is
    standardised per dimension over the (global) batch, as BatchNorm without affine parameters
    does: (z - mean) / sqrt(biased var + eps); C = z1n^T z2n / N is their (D, D) cross-correlation.
    Computed in float32.
    """
    if gather:
        z1, z2 = dist.gather(z1), dist.gather(z2)
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1n.T @ z2n / n  # (D, D)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's three unweighted terms (invariance, variance, covariance) over the (global) batch:

    invariance  = mean over samples and dimensions of (z1 - z2)^2
    variance    = mean over dimensions of relu(gamma - sqrt(var_j + eps)), averaged over z1 and z2
    covariance  = sum of squared off-diagonal covariances / D, summed over z1 and z2
    (unbiased variances and covariances, 1/(N-1), as in the paper's pseudo-code). Float32.
    """
    if gather:
        z1, z2 = dist.gather(z1), dist.gather(z2)
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance, covariance = z1.new_zeros(()), z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        std = torch.sqrt(z.pow(2).sum(0) / (n - 1) + eps)
        variance = variance + F.relu(gamma - std).mean() / 2
        cov = z.T @ z / (n - 1)  # (D, D)
        covariance = covariance + _off_diagonal(cov).pow(2).sum() / d
    return invariance, variance, covariance


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_w: float = 25.0,
    var_w: float = 25.0,
    cov_w: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> torch.Tensor:
    """VICReg (arXiv:2105.04906): sim_w * invariance + var_w * variance + cov_w * covariance
    (terms as in ``vicreg_terms``; the paper's weights are 25, 25, 1)."""
    inv, var, cov = vicreg_terms(z1, z2, gamma, eps, gather)
    return sim_w * inv + var_w * var + cov_w * cov
