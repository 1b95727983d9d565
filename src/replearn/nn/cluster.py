"""k-means for the clustering methods (DeepCluster, PCL): seeded Lloyd iterations with the paper's
empty-cluster split, PCA-whitening, and PCL's per-cluster concentration.

Everything runs on the CPU in float32 whatever device the features come from: the result is then a
function of (features, seed) alone, identical on every DDP process (each clusters the same
features) and in a resumed run. 60,000 x 256 features, k = 300, 20 iterations: 3.5 s on two lightly
loaded CPU cores (16-19 s while five people share them), nearly all of it the distance matmul.
"""

from __future__ import annotations

import torch

_BLOCK = 1 << 24  # distances per block (64 MB): N x k of them never sit in memory at once


def pca_whiten(x: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """DeepCluster's pre-processing (arXiv:1807.05520, section 3.3) before the L2 norm: centre,
    project on the top ``dim`` principal axes and scale each to unit variance. (N, D) -> (N, dim)."""
    x = x.detach().float().cpu()
    x = x - x.mean(0)
    cov = x.T @ x / max(1, len(x) - 1)  # (D, D)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    top = eigval.argsort(descending=True)[: min(dim, x.shape[1])]
    return x @ eigvec[:, top] / (eigval[top].clamp(min=0) + eps).sqrt()


def _nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    c_sq = (c * c).sum(1)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin
    rows = max(1, _BLOCK // len(c))
    return torch.cat([torch.addmm(c_sq, xb, c.T, alpha=-2).argmin(1) for xb in x.split(rows)])


def _split_empty(x: torch.Tensor, c: torch.Tensor, assign: torch.Tensor, g: torch.Generator) -> None:
    """DeepCluster's fix for an empty cluster (section 3.3, as faiss does it): take a non-empty cluster
    (larger ones likelier), put the empty centroid next to it with a small random perturbation, the
    old one opposite, and share the old cluster's points between the two. In place on c, assign."""
    k = len(c)
    counts = torch.bincount(assign, minlength=k)
    for ci in (counts == 0).nonzero().flatten().tolist():
        cj = int(torch.multinomial((counts - 1).clamp(min=0).double(), 1, generator=g))  # >= 2 points
        members = (assign == cj).nonzero().flatten()
        direction = torch.randn(x.shape[1], generator=g)
        delta = 1e-3 * (c[cj].norm() + 1e-8) * direction / direction.norm()
        side = (x[members] - c[cj]) @ delta > 0  # nearer to c + delta than to c - delta
        if side.all() or not side.any():  # identical points: split them in half
            side = torch.arange(len(members)) % 2 == 0
        c[ci], c[cj] = c[cj] + delta, c[cj] - delta
        assign[members[side]] = ci
        counts[ci] = side.sum()
        counts[cj] -= counts[ci]


def kmeans(
    x: torch.Tensor, k: int, seed: int, n_iter: int = 20, init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, D) features -> (centroids (k, D), assignments (N,) in [0, k)).

    Starts from k distinct random points (faiss's default, which DeepCluster and PCL use) unless
    ``init`` (k, D) is given; every iteration assigns each point to its nearest centroid, re-seeds
    empty clusters by splitting a non-empty one, then moves each centroid to its points' mean. No
    cluster is empty on return and each centroid is the mean of the points assigned to it.
    Deterministic for a given ``seed`` (CPU, float32)."""
    x = x.detach().float().cpu()
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    g = torch.Generator().manual_seed(seed)
    c = init.detach().float().cpu().clone() if init is not None else x[torch.randperm(n, generator=g)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(max(1, n_iter)):
        assign = _nearest(x, c)
        _split_empty(x, c, assign, g)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        c = sums / torch.bincount(assign, minlength=k).unsqueeze(1).float()
    return c, assign


def concentration(
    x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor, temperature: float, alpha: float = 10.0
) -> torch.Tensor:
    """PCL's concentration (arXiv:2005.04966, eq. 12) of each of the k clusters, (k,):
        phi = sum_{z=1..Z} ||v_z - c|| / (Z log(Z + alpha)),
    over the Z points v_z of the cluster; a cluster of one point takes the largest phi. As in the
    paper's code, phi is then clamped to its 10th-90th percentiles and scaled to mean ``temperature``."""
    x, centroids, assign = x.detach().float().cpu(), centroids.detach().float().cpu(), assign.cpu()
    k = len(centroids)
    dist = (x - centroids[assign]).norm(dim=1)
    z = torch.bincount(assign, minlength=k).float()
    phi = torch.zeros(k).index_add_(0, assign, dist) / (z * torch.log(z + alpha)).clamp(min=1e-12)
    many = z > 1
    phi = torch.where(many, phi, phi[many].max() if many.any() else torch.tensor(1.0))
    phi = phi.clamp(torch.quantile(phi, 0.1), torch.quantile(phi, 0.9)).clamp(min=1e-8)  # 0 if all points coincide
    return temperature * phi / phi.mean()
