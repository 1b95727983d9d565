"""ProtoNCE (PCL): MoCo's instance InfoNCE plus contrast against k-means prototypes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from replearn.losses.infonce import infonce_queue


def proto_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    prototypes: Sequence[torch.Tensor] = (),
    assignments: Sequence[torch.Tensor] = (),
    concentrations: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """ProtoNCE (Li et al., arXiv:2005.04966, eq. 11), the mean over the N queries of

        -log( exp(q.k / T) / (exp(q.k / T) + sum_j exp(q.n_j / T)) )
        - 1/M sum_m log( exp(q.c^m_s / phi^m_s) / sum_c exp(q.c^m_c / phi^m_c) ),

    q (N, P) queries, k (N, P) their positive keys, queue (K, P) the negative keys n_j; for each of
    the M clusterings, ``prototypes[m]`` (k_m, P) the centroids c^m, ``assignments[m]`` (N,) the
    cluster s of each query's image and ``concentrations[m]`` (k_m,) the per-cluster temperatures
    phi^m. Every vector is L2-normalised (dot products are cosines). All k_m prototypes are
    contrasted (the paper's code samples r negative prototypes; with a few hundred they all fit).
    No prototypes: MoCo's InfoNCE alone. Anchors are local; under DDP the queue already holds every
    process's keys. Computed in float32.
    """
    loss = infonce_queue(q, k, queue, temperature)  # MoCo's term
    q = F.normalize(q.float(), dim=1)
    if len(prototypes):
        proto = [
            F.cross_entropy(q @ F.normalize(c.float(), dim=1).T / phi.float(), s)  # (N, k_m) logits
            for c, s, phi in zip(prototypes, assignments, concentrations, strict=True)
        ]
        loss = loss + torch.stack(proto).mean()
    return loss
