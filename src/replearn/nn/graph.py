"""A k-nearest-neighbour graph over features and label spreading on it (Zhou et al., "Learning with
local and global consistency", NIPS 2004): a handful of labels spread along the graph of an
encoder's features to every image, a better start for a few-label classifier than the labels alone.

On the CPU in float32; 60,000 x 256 features, k = 10: the graph is one (chunk x N) similarity
matmul per chunk, the spreading a sparse product per iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_indices(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) indices of each row's ``k`` most cosine-similar other rows (the row itself excluded),
    most similar first. ``chunk`` rows at a time, so N x N similarities never sit in memory."""
    z = F.normalize(feats.detach().float().cpu(), dim=1)
    n = len(z)
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} rows, not {k}")
    out = []
    for i in range(0, n, chunk):
        s = z[i : i + chunk] @ z.T
        r = torch.arange(s.shape[0])
        s[r, r + i] = float("-inf")
        out.append(s.topk(k, dim=1).indices)
    return torch.cat(out)


def label_spreading(
    neighbours: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, n_classes: int,
    alpha: float = 0.99, iters: int = 30,
) -> torch.Tensor:
    """Scores (N, n_classes) after ``iters`` steps of F <- alpha S F + (1 - alpha) Y from F = Y,
    where Y one-hot encodes ``labels`` at rows ``index`` (zero elsewhere), W is the symmetric
    k-NN graph (W_ij = [j in nbrs(i)] + [i in nbrs(j)]) and S = D^-1/2 W D^-1/2. A row the labels
    never reach stays all zero."""
    n, k = neighbours.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = neighbours.reshape(-1).cpu()
    ij = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    w = torch.sparse_coo_tensor(ij, torch.ones(ij.shape[1]), (n, n), check_invariants=True).coalesce()  # duplicates add up
    deg = torch.zeros(n).index_add_(0, w.indices()[0], w.values())
    d = deg.clamp_min(1e-12).rsqrt()
    vals = w.values() * d[w.indices()[0]] * d[w.indices()[1]]
    s = torch.sparse_coo_tensor(w.indices(), vals, (n, n), is_coalesced=True, check_invariants=True)
    y = torch.zeros(n, n_classes)
    y[index.cpu(), labels.cpu()] = 1.0
    f = y.clone()
    for _ in range(iters):
        f = alpha * torch.sparse.mm(s, f) + (1 - alpha) * y
    return f
