"""Weighted kNN on frozen features, the InstDisc / DINO monitor (arXiv:1805.01978, 2104.14294).

Cosine similarity of L2-normalised features, the k most similar train items vote for their class
with weight exp(sim / T); the class with the largest summed weight is the prediction. Above
``INDEX_ABOVE`` train items the top-k come from the HNSW index that ``replearn search`` uses
(approximate) instead of the exact chunked matrix product.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = torch.Tensor | np.ndarray
INDEX_ABOVE = 200_000  # train items above which the top-k come from an HNSW index


def _as_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(dtype=dtype)


@torch.no_grad()
def knn_predict(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted class (int64, (M,)) of each test item by weighted kNN vote among the train items.

    Runs in float32 on the device of ``train_feats``, ``chunk`` test items at a time, so a
    10k x 60k similarity matrix never exists at once. ``k`` is clipped to the train size. Above
    ``INDEX_ABOVE`` train items the top-k are approximate, from ``replearn.embed.index.neighbours``
    (HNSW on the CPU), with the same vote.
    """
    device = train_feats.device if isinstance(train_feats, torch.Tensor) else torch.device("cpu")
    train = F.normalize(_as_tensor(train_feats, torch.float32).to(device).flatten(1), dim=1)  # (N, D)
    test = F.normalize(_as_tensor(test_feats, torch.float32).to(device).flatten(1), dim=1)  # (M, D)
    labels = _as_tensor(train_labels, torch.int64).to(device).flatten()  # (N,)
    if len(labels) != len(train):
        raise ValueError(f"{len(train)} train features but {len(labels)} train labels")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train features have dim {train.shape[1]}, test features {test.shape[1]}")
    if len(train) == 0:
        raise ValueError("kNN needs at least one train item")
    if labels.min() < 0:
        raise ValueError("train labels must be >= 0 (drop unlabelled items before the kNN probe)")
    if temperature <= 0 or k < 1 or chunk < 1:
        raise ValueError(f"need temperature > 0, k >= 1, chunk >= 1 (got {temperature}, {k}, {chunk})")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= num_classes:
        raise ValueError(f"train label {int(labels.max())} does not fit num_classes={num_classes}")
    k = min(k, len(train))

    approx = None  # (similarities (M, k), rows (M, k)) from the index, above INDEX_ABOVE train items
    if len(train) > INDEX_ABOVE:
        from replearn.embed.index import neighbours

        approx = neighbours(train.cpu().numpy(), test.cpu().numpy(), k, exact_max=INDEX_ABOVE)
    preds = torch.empty(len(test), dtype=torch.int64, device=device)
    for start in range(0, len(test), chunk):
        if approx is None:
            sim = test[start : start + chunk] @ train.T  # (B, N)
            top_sim, top_idx = sim.topk(k, dim=1)  # (B, k), sorted descending
        else:
            top_sim = torch.from_numpy(approx[0][start : start + chunk]).to(device)  # (B, k), sorted descending
            top_idx = torch.from_numpy(approx[1][start : start + chunk]).to(device)  # -1: fewer than k found
        # exp((s - s_max) / T): the per-row factor exp(-s_max / T) leaves the argmax unchanged
        # and keeps a small T from overflowing float32.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (B, k)
        weights = weights.masked_fill(top_idx < 0, 0.0)  # no vote from a neighbour the index did not find
        votes = torch.zeros(len(top_idx), num_classes, device=device)  # (B, C)
        votes.scatter_add_(1, labels[top_idx.clamp(min=0)], weights)
        preds[start : start + chunk] = votes.argmax(dim=1)
    return preds


def knn_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Test top-1 accuracy in percent of the weighted kNN classifier (see ``knn_predict``)."""
    preds = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk)
    truth = _as_tensor(test_labels, torch.int64).flatten().to(preds.device)
    if len(truth) != len(preds) or len(truth) == 0:
        raise ValueError(f"{len(preds)} test features and {len(truth)} test labels (need equal, > 0)")
    return 100.0 * (preds == truth).double().mean().item()
