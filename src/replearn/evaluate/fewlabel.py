"""Few-label probe: the linear probe fit on ``per_class`` labelled train items per class, per seed."""

from __future__ import annotations

import numpy as np

from replearn.errors import ReplearnError
from replearn.evaluate.linear import (
    DEFAULT_C,
    ArrayLike,
    as_numpy,
    as_split,
    fit_linear_probe,
)


def label_subset(labels: ArrayLike, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly ``per_class`` items of every class, drawn without replacement.

    The classes are those present in ``labels`` (entries < 0 mean unlabelled and are never
    picked). Deterministic given ``seed`` (numpy ``default_rng``); semi-supervised runs use the
    same draw, so their 40- and 250-label splits match the probe's.
    """
    y = as_numpy(labels, np.int64).reshape(-1)
    if per_class < 1:
        raise ReplearnError(f"per_class must be >= 1, got {per_class}", "use e.g. 4 or 25 labels per class")
    classes, counts = np.unique(y[y >= 0], return_counts=True)
    if len(classes) == 0:
        raise ReplearnError("no labelled items to draw a label subset from", "the data needs class labels")
    short = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < per_class]
    if short:
        cls, n = short[0]
        raise ReplearnError(
            f"class {cls} has only {n} labelled items, fewer than per_class={per_class}",
            f"use per_class <= {int(counts.min())}",
        )
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def few_label_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    per_class: int,
    seeds: tuple[int, ...] = (0, 1, 2),
    C: float = DEFAULT_C,
    max_iter: int | None = None,
    solver: str = "torch",
) -> dict:
    """Test top-1 in percent of the linear probe on ``label_subset(.., per_class, seed)``, per seed.

    Standardisation is fit on the few labelled items only. Returns
    ``{"mean", "min", "max", "per_seed"}`` with ``per_seed`` in the order of ``seeds``.
    """
    x_train, y_train = as_split(train_feats, train_labels, "train")
    x_test, y_test = as_split(test_feats, test_labels, "test")
    if len(seeds) == 0:
        raise ValueError("few_label_accuracy needs at least one seed")
    per_seed = []
    for seed in seeds:
        idx = label_subset(y_train, per_class, seed)
        probe = fit_linear_probe(x_train[idx], y_train[idx], C, max_iter, solver)
        per_seed.append(100.0 * float(np.mean(probe.predict(x_test) == y_test)))
    return {
        "mean": float(np.mean(per_seed)),
        "min": min(per_seed),
        "max": max(per_seed),
        "per_seed": per_seed,
    }
