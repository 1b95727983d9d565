"""Contrastive losses as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn import dist


def nt_xent(z: torch.Tensor, indexes: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """NT-Xent / InfoNCE over all views in a batch (SimCLR, arXiv:2002.05709; SupCon's positives).

    ``z`` (N, D) holds every view of the local batch; items with equal ``indexes`` (N,) are
    positives of each other (instance ids give SimCLR, class labels give SupCon), every other item
    is a negative. For anchor i with positives P(i):
        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a != i} exp(s_ia / T) ),
    s = cosine similarity; the result is the mean over anchors that have a positive. Under DDP the
    candidates (and their indexes) are gathered from every process with gradients, while anchors
    stay local, so W processes x N equal 1 process x W*N. Computed in float32.
    """
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    if gather:
        cand, cand_idx, offset = dist.gather(z), dist.gather(indexes), dist.rank() * n
    else:
        cand, cand_idx, offset = z, indexes, 0
    logits = z @ cand.T / temperature  # (N, W*N)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(n, device=z.device), torch.arange(n, device=z.device) + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    pos = (indexes[:, None] == cand_idx[None, :]) & ~self_mask  # (N, W*N)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(1)
    has_pos = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has_pos] / n_pos[has_pos])
    return per_anchor.mean()
