"""Metric-learning losses (contrastive margin, triplet with mining, ranked list, ArcFace/CosFace),
as pure functions of tensors.

Embedding losses L2-normalise ``z`` (N, D) and use the Euclidean distance between the normalised
rows (in [0, 2]); ``labels`` (N,) are class ids. Everything is batched and computed in float32.
SupCon (arXiv:2004.11362) is not here: it is ``nt_xent(z, labels)`` with class labels as indexes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MINING = ("all", "hard", "semihard")
MARGIN_KINDS = ("arcface", "cosface")

# below this squared distance two points count as coinciding: sqrt's slope there (<= 5e5) is finite
_EPS = 1e-12


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) with value and gradient 0 where x <= 1e-12 (sqrt's slope is infinite at 0); the clamp
    keeps the branch that ``where`` discards finite, so no 0 * inf = NaN reaches the gradient."""
    return torch.where(x > _EPS, x.clamp_min(_EPS).sqrt(), torch.zeros_like(x))


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives), both (N, N) bool: same label and j != i; different label."""
    same = labels[:, None] == labels[None, :]  # (N, N)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def pairwise_distances(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the L2-normalised rows of ``z`` (N, D) -> (N, N), in [0, 2].

    d_ij^2 = g_ii + g_jj - 2 g_ij from the Gram matrix g of the normalised rows (g_ii = 1 up to
    rounding; using it makes the diagonal exactly 0), clamped at 0, then a square root whose value
    and gradient are 0 for coinciding points, so the diagonal and duplicate embeddings backpropagate
    finite (zero) gradients. Float32.
    """
    z = F.normalize(z.float(), dim=1)  # (N, D)
    gram = z @ z.T  # (N, N)
    sq = gram.diagonal()  # (N,)
    d2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)  # (N, N); rounding can dip below 0
    return _safe_sqrt(d2)


def contrastive_margin_loss(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Contrastive loss with a margin (Hadsell, Chopra & LeCun, CVPR 2006, "DrLIM").

    Over all unordered pairs i < j: a positive pair (same label) costs d_ij^2, a negative pair
    max(0, margin - d_ij)^2. Returns mean over positive pairs of theirs + mean over negative pairs of
    theirs (two means, so the usually far more numerous negatives do not swamp the positives; the
    paper's factors 1/2 are dropped). A batch with no positive (or no negative) pair gives 0 for
    that part.
    """
    d = pairwise_distances(z)  # (N, N)
    n = d.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=d.device)  # (P,) each: the pairs i < j
    dij = d[i, j]  # (P,)
    same = labels[i] == labels[j]  # (P,)
    pos = dij.pow(2).masked_fill(~same, 0.0)
    neg = (margin - dij).clamp_min(0).pow(2).masked_fill(same, 0.0)
    # sum / max(count, 1): an empty part is 0 and stays in the graph, so backward() still runs
    return pos.sum() / same.sum().clamp_min(1) + neg.sum() / (~same).sum().clamp_min(1)


@torch.no_grad()
def mine_triplets(
    d: torch.Tensor, labels: torch.Tensor, mining: str = "all"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet mining (FaceNet arXiv:1503.03832; batch-all / batch-hard of arXiv:1703.07737).

    ``d`` (N, N) distances, ``labels`` (N,). Returns (anchor, positive, negative) index tensors (T,)
    of the chosen triplets; a positive is p != a with labels[p] == labels[a], a negative has
    labels[n] != labels[a].
      "all":      every valid triplet, in (a, p, n) row-major order.
      "hard":     per anchor that has a positive and a negative, the farthest positive and the
                  nearest negative; in anchor order (ties: the lowest index).
      "semihard": per (a, p) pair whose anchor has a negative, the nearest negative farther than
                  the positive (d_an > d_ap); when none is, the farthest negative (TensorFlow
                  Addons' fallback: the least violating one); in (a, p) row-major order.
    """
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; valid: {', '.join(MINING)}")
    d = d.detach()
    pos, neg = _pair_masks(labels)  # (N, N) each
    if mining == "all":
        valid = pos[:, :, None] & neg[:, None, :]  # (N, N, N) indexed [a, p, n]
        return valid.nonzero(as_tuple=True)
    if mining == "hard":
        anchors = (pos.any(1) & neg.any(1)).nonzero(as_tuple=True)[0]  # (A,)
        hardest_pos = d.masked_fill(~pos, -math.inf).argmax(1)  # (N,)
        nearest_neg = d.masked_fill(~neg, math.inf).argmin(1)  # (N,)
        return anchors, hardest_pos[anchors], nearest_neg[anchors]
    a, p = pos.nonzero(as_tuple=True)  # (P,) each
    keep = neg[a].any(1)
    a, p = a[keep], p[keep]
    d_an, neg_a = d[a], neg[a]  # (P, N) each
    semi = neg_a & (d_an > d[a, p][:, None])  # (P, N)
    nearest_semi = d_an.masked_fill(~semi, math.inf).argmin(1)  # (P,)
    farthest = d_an.masked_fill(~neg_a, -math.inf).argmax(1)  # (P,)
    return a, p, torch.where(semi.any(1), nearest_semi, farthest)


def triplet_loss(
    z: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "all"
) -> torch.Tensor:
    """Triplet loss max(0, d_ap - d_an + margin) over mined triplets (FaceNet arXiv:1503.03832;
    batch-all and batch-hard: Hermans et al. arXiv:1703.07737). See ``mine_triplets``.

    "all": mean over the triplets whose term is > 0 (Hermans et al.'s batch-all, which averages the
    active triplets so that the many easy ones do not dilute the loss as training proceeds);
    "hard": mean over anchors; "semihard": mean over (anchor, positive) pairs. 0 without triplets.
    The hinge is used throughout (not Hermans et al.'s softplus variant).
    """
    d = pairwise_distances(z)  # (N, N)
    a, p, n = mine_triplets(d, labels, mining)  # (T,) each
    terms = (d[a, p] - d[a, n] + margin).clamp_min(0)  # (T,)
    count = (terms > 0).sum() if mining == "all" else torch.tensor(len(terms), device=d.device)
    return terms.sum() / count.clamp_min(1)


def ranked_list_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    t_n: float = 10.0,
    lam: float = 1.0,
) -> torch.Tensor:
    """Ranked List Loss (Wang et al., CVPR 2019, arXiv:1903.03238).

    Per anchor i, positives (j != i, same label) farther than alpha - margin cost
        L_P = mean_j (d_ij - (alpha - margin))        (0 when none violates),
    negatives nearer than alpha, weighted w_ij = exp(t_n (alpha - d_ij)), cost
        L_N = sum_j w_ij (alpha - d_ij) / sum_j w_ij   (0 when none violates);
    loss = mean over anchors of L_P + lam * L_N. The weights are constants (detached), as in the
    paper, which uses them only to weight each negative's gradient.
    """
    d = pairwise_distances(z)  # (N, N)
    pos, neg = _pair_masks(labels)  # (N, N) each
    pos_viol = pos & (d > alpha - margin)  # (N, N)
    l_p = (d - (alpha - margin)).masked_fill(~pos_viol, 0.0).sum(1) / pos_viol.sum(1).clamp_min(1)  # (N,)
    neg_viol = neg & (d < alpha)  # (N, N)
    # w_ij / sum_j w_ij is a softmax of t_n (alpha - d_ij) over the violating negatives: no exp
    # overflow for a large t_n. A row without violators would be all -inf (NaN): give it zeros,
    # its uniform weights are masked out below.
    logits = (t_n * (alpha - d)).detach().masked_fill(~neg_viol, -math.inf)  # (N, N)
    logits = logits.masked_fill(~neg_viol.any(1, keepdim=True), 0.0)
    w = logits.softmax(1)  # (N, N)
    l_n = (w * (alpha - d)).masked_fill(~neg_viol, 0.0).sum(1)  # (N,)
    return (l_p + lam * l_n).mean()


def margin_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 30.0,
    margin: float = 0.5,
    kind: str = "arcface",
) -> torch.Tensor:
    """Additive-margin logits: ArcFace (Deng et al. arXiv:1801.07698) or CosFace (Wang et al.
    arXiv:1801.09414).

    ``cos`` (N, C) holds cosines between normalised embeddings and normalised class weights. The
    target class gets cos(theta + m) (ArcFace) or cos(theta) - m (CosFace), the others keep
    cos(theta); all times ``scale`` -> (N, C).
    ArcFace is computed as cos(theta) cos(m) - sin(theta) sin(m), sin(theta) = sqrt(1 - cos^2) with
    a zero-gradient square root at 0: exact values with no arccos, and finite gradients at
    cos = +-1 (where d theta / d cos is infinite). Past theta + m > pi, cos(theta + m) would rise
    again with theta; there (cos(theta) < -cos(m)) we use cos(theta) - (1 - cos(m)), which is
    decreasing in theta and continuous at the switch (both give -1), unlike InsightFace's
    cos(theta) - m sin(m), which jumps by cos(m) + m sin(m) - 1 there. For 0 <= m <= pi.
    """
    if kind not in MARGIN_KINDS:
        raise ValueError(f"unknown margin kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
    cos = cos.float()  # (N, C)
    c = cos.gather(1, labels[:, None]).squeeze(1)  # (N,) target cosines
    if kind == "cosface":
        target = c - margin
    else:
        sin = _safe_sqrt(1 - c * c)  # (N,)
        target = c * math.cos(margin) - sin * math.sin(margin)  # cos(theta + m)
        target = torch.where(c < -math.cos(margin), c - (1 - math.cos(margin)), target)
    is_target = F.one_hot(labels, cos.shape[1]).bool()  # (N, C)
    return scale * torch.where(is_target, target[:, None], cos)


def arcface_loss(
    z: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 30.0,
    margin: float = 0.5,
    kind: str = "arcface",
) -> torch.Tensor:
    """ArcFace / CosFace loss: cross-entropy of ``margin_logits`` (arXiv:1801.07698, 1801.09414).

    ``z`` (N, D) embeddings, ``weight`` (C, D) class weights (a parameter of the method), both
    L2-normalised here; ``labels`` (N,) in [0, C).
    """
    cos = F.normalize(z.float(), dim=1) @ F.normalize(weight.float(), dim=1).T  # (N, C)
    return F.cross_entropy(margin_logits(cos, labels, scale, margin, kind), labels)
