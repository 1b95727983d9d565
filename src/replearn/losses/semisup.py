"""Targets and losses of semi-supervised learning: pure functions of tensors.

Probabilities are (N, K) rows summing to 1; logits are (N, K). Every loss returns a float32 scalar,
whatever the autocast dtype of its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """MixMatch's sharpening (arXiv:1905.02249, eq. 7): p_i^(1/T) / sum_j p_j^(1/T), rowwise.

    Computed as softmax(log p / T), so tiny probabilities raised to a large power do not underflow
    to a 0/0 row; T = 1 returns p, T -> 0 a one-hot of the argmax."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(torch.log(p.float().clamp_min(1e-30)) / temperature, dim=1)


def align_distribution(p: torch.Tensor, model_marginal: torch.Tensor, label_marginal: torch.Tensor) -> torch.Tensor:
    """ReMixMatch's distribution alignment (arXiv:1911.09785, section 3.2.1): each row of p scaled
    by label_marginal / model_marginal (the class marginal of the labelled data over the running
    mean of the model's predictions on unlabelled data), then renormalised to sum to 1."""
    q = p.float() * (label_marginal.float() / model_marginal.float().clamp_min(1e-12))
    return q / q.sum(dim=1, keepdim=True).clamp_min(1e-30)


def confidence_mask(p: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """FixMatch's mask (arXiv:2001.07685, eq. 4): 1 where max_k p_k >= threshold, else 0 (float (N,)).

    ``threshold`` is a float, or an (N,) tensor of per-row thresholds (class-adaptive thresholds)."""
    return (p.float().max(dim=1).values >= threshold).float()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_k target_k log softmax(logits)_k: the cross-entropy to a soft target."""
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def pseudo_label_loss(logits_strong: torch.Tensor, p_weak: torch.Tensor, threshold: float | torch.Tensor):
    """FixMatch's unlabelled loss: cross-entropy of the strong view's logits to the weak view's
    argmax, on the rows whose weak confidence reaches ``threshold``, averaged over ALL rows (the
    paper's 1/(mu B) normalisation). Returns (loss, mask)."""
    mask = confidence_mask(p_weak, threshold)
    ce = F.cross_entropy(logits_strong.float(), p_weak.argmax(dim=1), reduction="none")
    return (ce * mask).mean(), mask


def mse_consistency(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MixMatch's unlabelled loss (eq. 5): squared L2 between probability vectors, divided by the
    number of classes K and averaged over rows (so it is the mean over all N*K entries)."""
    return (p.float() - target.float()).pow(2).mean()


def flexmatch_thresholds(learned: torch.Tensor, n_classes: int, threshold: float, warmup: bool = True) -> torch.Tensor:
    """FlexMatch's class-adaptive thresholds (arXiv:2110.08263, eqs. 6-7 with the convex mapping
    x / (2 - x)). ``learned`` (N,) holds, per unlabelled image, the class of its latest prediction
    that passed the fixed ``threshold``, or -1. sigma_c counts the images learned as class c;
    beta_c = sigma_c / max(max_c sigma_c, unused) with the warm-up (``unused`` = images still -1),
    else sigma_c / max_c sigma_c; the threshold of class c is threshold * beta_c / (2 - beta_c).
    Returns (n_classes,) thresholds."""
    sigma = torch.bincount(learned[learned >= 0], minlength=n_classes).float()
    unused = float((learned < 0).sum())
    top = max(float(sigma.max()), unused) if warmup else float(sigma.max())
    if top <= 0:
        return torch.full((n_classes,), 0.0)  # nothing learned yet: beta = 0 for every class
    beta = sigma / top
    return threshold * beta / (2 - beta)


def pseudo_label_graph(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """CoMatch's target graph (arXiv:2011.11183, eq. 4) over one unlabelled batch: W_ij = p_i . p_j
    (the chance that images i and j share a class under the weak predictions ``p``), zeroed below
    ``threshold``, with W_ii = 1; each row then normalised to sum to 1. ``threshold`` > 1 keeps only
    the diagonal (every image is its own and only positive: instance contrast)."""
    p = p.float()
    w = p @ p.t()
    w = w * (w >= threshold).float()
    w.fill_diagonal_(1.0)
    return w / w.sum(dim=1, keepdim=True)


def graph_contrastive_loss(q: torch.Tensor, k: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy from the target graph ``target`` (N, N rows summing to 1) to the softmax over
    keys of the similarities of L2-normalised queries ``q`` (N, D) and keys ``k`` (N, D) divided by
    ``temperature``: -mean_i sum_j target_ij log softmax_j(q_i . k_j / t). Row i's key i is the
    other view of image i."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    return soft_cross_entropy(q @ k.t() / temperature, target)
