"""Contrastive Predictive Coding's InfoNCE between predicted and actual patch encodings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cpc_info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of CPC (arXiv:1807.03748; v2: arXiv:1905.09272) over patches of a batch of images.

    ``pred`` (N, P, D) predicts, for each of N images, the encodings of P patches; ``target``
    (N, P, D) holds the actual encodings. Prediction (n, p) must pick target (n, p) out of the
    same patch position in every image of the batch, {target[m, p]}, and every other patch of
    its own image, {target[n, q], q != p}: N + P - 1 candidates.
        loss = mean_{n,p} -log( exp(s(n,p; n,p) / T) / sum_{candidates c} exp(s(n,p; c) / T) ),
    s = cosine similarity. The other images' patches at the same position are the hard negatives
    (small images are centred, so a position fixes much of a patch's look) and cost N*P*(N+P)*D
    instead of (N*P)^2*D for all of the batch's patches. CPC scores with a raw dot product; cosine
    with a temperature is the usual, steadier variant. Negatives are local to the process. Float32.
    """
    pred, target = F.normalize(pred.float(), dim=-1), F.normalize(target.float(), dim=-1)
    n, p, _ = pred.shape
    same_pos = torch.einsum("npd,mpd->npm", pred, target)  # (N, P, N): positive at m == n
    same_img = torch.einsum("npd,nqd->npq", pred, target)  # (N, P, P): the positive again at q == p
    same_img = same_img.masked_fill(torch.eye(p, dtype=torch.bool, device=pred.device), float("-inf"))
    logits = torch.cat([same_pos, same_img], dim=2).reshape(n * p, n + p) / temperature
    positive = torch.arange(n, device=pred.device).repeat_interleave(p)
    return F.cross_entropy(logits, positive)
