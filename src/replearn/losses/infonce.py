"""InfoNCE against a queue of negatives (MoCo), as a pure function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_queue(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """MoCo's InfoNCE (arXiv:1911.05722, eq. 1): each query's positive is its own key, the
    negatives are the K queued keys of earlier batches,
        loss_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.queue_j / T)) ),
    i.e. cross-entropy with target 0 over logits (N, 1+K); the mean over the N queries.

    ``q`` (N, D) queries, ``k`` (N, D) their positive keys (no gradient is needed through them),
    ``queue`` (K, D) negatives; all three are l2-normalised here, in float32. Nothing is gathered:
    the queue already holds the keys of every process (``Queue.push`` gathers them), so each process
    computes its own queries' loss and DDP's gradient average makes W x N equal 1 x W*N.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    queue = F.normalize(queue.float(), dim=1)
    l_pos = (q * k).sum(1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.T  # (N, K)
    logits = torch.cat([l_pos, l_neg], 1) / temperature  # (N, 1+K)
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)
