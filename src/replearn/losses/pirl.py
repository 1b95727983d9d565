"""PIRL's contrastive loss against memory-bank vectors, as a pure function of tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pirl_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    exclude: torch.Tensor | None = None,
    kind: str = "infonce",
    n_data: int | None = None,
    z: float = 1.0,
) -> torch.Tensor:
    """The loss of anchors (B, D) against their positives (B, D) and negatives (K, D) shared by the
    batch (memory-bank rows, PIRL arXiv:1912.01991); ``exclude`` (B, K) bool leaves negatives out
    (the anchor's own image). s(a, b) = cosine similarity / T. Mean over anchors, in float32.

    ``kind="infonce"``: -log( e^{s(a,p)} / (e^{s(a,p)} + sum_j e^{s(a,n_j)}) ), the softmax form.
    ``kind="nce"``: the paper's noise-contrastive estimation with K noise samples out of ``n_data``
    images, h(a, b) = e^{s(a,b)} / (e^{s(a,b)} + K * z / n_data) and
        loss = -log h(a, p) - sum_j log(1 - h(a, n_j));
    ``z`` is the partition constant Z of P(b|a) = e^{s(a,b)} / Z (1: the formula as printed; Wu et
    al. and PIRL's code estimate Z = n_data * mean e^{s} once, from the first batch).
    """
    a = F.normalize(anchor.float(), dim=1)
    s_pos = (a * F.normalize(positive.float(), dim=1)).sum(1) / temperature  # (B,)
    s_neg = a @ F.normalize(negatives.float(), dim=1).T / temperature  # (B, K)
    if kind == "infonce":
        if exclude is not None:
            s_neg = s_neg.masked_fill(exclude, float("-inf"))
        return (torch.logaddexp(s_pos, torch.logsumexp(s_neg, dim=1)) - s_pos).mean()
    if kind != "nce":
        raise ValueError(f"kind must be 'infonce' or 'nce', not {kind!r}")
    if n_data is None:
        raise ValueError("the nce loss needs n_data, the size of the data set")
    log_noise = math.log(negatives.shape[0] * z / n_data)  # log(K Z / |D|)
    log_h_pos = s_pos - torch.logaddexp(s_pos, s_pos.new_tensor(log_noise))  # log h(a, p)
    log_1m_h_neg = log_noise - torch.logaddexp(s_neg, s_neg.new_tensor(log_noise))  # log(1 - h(a, n_j))
    if exclude is not None:
        log_1m_h_neg = log_1m_h_neg.masked_fill(exclude, 0.0)
    return (-log_h_pos - log_1m_h_neg.sum(1)).mean()
