"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss (arXiv:2006.09882), pure functions."""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F

from replearn import dist


def _all_reduce_(x: torch.Tensor, op=tdist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all_reduce across processes; nothing without a process group."""
    if dist.is_dist():
        tdist.all_reduce(x, op=op)
    return x


def _float(x: torch.Tensor) -> torch.Tensor:
    """float32 at least (bf16/fp16 under autocast -> float32; float64 stays, for tests)."""
    return x if x.dtype == torch.float64 else x.float()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft codes (N, K) that split the samples of every process equally among the K prototypes.

    ``scores`` (N, K) are prototype scores of this process's samples. Starting from
    ``Q = exp(scores / eps)`` over all B = sum of N over processes samples, each iteration scales
    the prototypes' totals to 1/K, then each sample's total to 1/B (sums across processes by
    all_reduce, so W processes x N give the codes of 1 process x W*N). Returned as ``B * Q``:

    * exact: each sample's code (a row) sums to 1, since the last scaling was per sample;
    * approximate: each prototype's total over all B samples (a column) is about B/K, and it
      reaches B/K as ``iters`` grows (Sinkhorn's theorem; 3 iterations are SwAV's choice).

    Computed in float32 (float64 input stays float64). The global maximum is subtracted before
    ``exp`` (a constant factor that the first scaling removes), so large ``scores / eps`` cannot
    overflow; their spread must still stay under ~80 in float32 (cosines: eps >= 0.025), else a
    prototype's entries can all underflow to 0.
    """
    s = _float(scores) / eps
    m = _all_reduce_(s.max().reshape(1), tdist.ReduceOp.MAX)
    q = torch.exp(s - m).T  # (K, N)
    k = q.shape[0]
    b = _all_reduce_(torch.tensor([float(q.shape[1])], device=q.device))
    q /= _all_reduce_(q.sum().reshape(1))
    for _ in range(iters):
        q /= _all_reduce_(q.sum(dim=1, keepdim=True))  # each prototype: total 1/K ...
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # ... each sample: total 1/B (local: a sample's K scores)
        q /= b
    return (q * b).T


def swapped_prediction_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction: every crop predicts the codes of every other code-bearing crop.

    ``scores`` (V, N, K): prototype scores of the V crops of N images; ``codes`` (G, N, K): the
    Sinkhorn codes of the first G crops (the large ones, G <= V). With p_v = softmax(scores_v / T),
        loss = mean over pairs (g < G, v != g) of  -1/N sum_n sum_k codes[g, n, k] log p_v[n, k],
    which is the paper's sum over g of sum_{v != g} .../(V - 1), divided by G. The per-process
    mean over N is what DDP averages, so W processes x N equal 1 process x W*N. Float32 at least.
    """
    v, n = scores.shape[0], scores.shape[1]
    g = codes.shape[0]
    log_p = F.log_softmax(_float(scores) / temperature, dim=-1)  # (V, N, K)
    ce = -torch.einsum("gnk,vnk->gv", codes.to(log_p.dtype), log_p) / n  # (G, V): mean cross-entropy of a pair
    pair = torch.ones(g, v, dtype=torch.bool, device=ce.device)
    pair[torch.arange(g), torch.arange(g)] = False  # a crop does not predict its own code
    return ce[pair].mean()
