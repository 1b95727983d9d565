"""Disentanglement metrics: MIG (Chen et al., arXiv:1802.04942) and the FactorVAE score (Kim & Mnih,
arXiv:1802.05983).

Both score a representation ``codes`` (N, D) of N images against ``factors`` (N, K): the index of
each image's value of each of K ground-truth generating factors (dSprites: shape, scale, rotation,
x, y). Pure functions in numpy float64; torch tensors are accepted and copied to numpy. Factor
values may be any integers and need not form a full grid. A factor with a single value carries no
information; both metrics leave it out and list it under ``skipped_factors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _as_codes(codes: ArrayLike) -> np.ndarray:
    z = _numpy(codes).astype(np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"codes must be (N, D) with N, D >= 1, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("codes hold NaN or inf")
    return z


def _as_factors(factors: ArrayLike, n: int) -> np.ndarray:
    f = _numpy(factors)
    if f.ndim != 2 or f.shape[0] != n or f.shape[1] == 0:
        raise ValueError(f"factors must be (N, K) with N = {n} codes and K >= 1, got shape {f.shape}")
    if f.dtype.kind not in "biuf" or (f.dtype.kind == "f" and not np.array_equal(f, np.round(f))):
        raise ValueError(f"factors must hold integer value indices, got dtype {f.dtype}")
    return f.astype(np.int64)


def _as_vector(x: ArrayLike, name: str) -> np.ndarray:
    v = _numpy(x)
    if v.ndim != 1 or v.dtype.kind not in "biuf" or (v.dtype.kind == "f" and not np.array_equal(v, np.round(v))):
        raise ValueError(f"{name} must be a 1-D vector of integer labels, got shape {v.shape}, dtype {v.dtype}")
    return v.astype(np.int64)


def _mi_from_counts(joint: np.ndarray) -> np.ndarray:
    """Mutual information in nats of each joint count table ``joint`` (..., A, B) -> (...).

    I = sum_ab (c_ab / n) log(c_ab n / (c_a c_b)). Counts stay integers in float64, so c_ab n and
    c_a c_b are exact (below 2^53) and an exactly independent table gives log(1) = 0, not +-1e-17.
    """
    c = joint.astype(np.float64)
    n = c.sum(axis=(-2, -1), keepdims=True)  # (..., 1, 1)
    ca = c.sum(axis=-1, keepdims=True)  # (..., A, 1)
    cb = c.sum(axis=-2, keepdims=True)  # (..., 1, B)
    nz = c > 0
    ratio = np.where(nz, c * n / np.where(nz, ca * cb, 1.0), 1.0)  # (..., A, B), 1 where c = 0
    mi = (c / n * np.log(ratio)).sum(axis=(-2, -1))
    return np.maximum(mi, 0.0)  # rounding can leave -1e-17 on an independent table


def _entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution with positive ``counts``: sum (c/n) log(n/c)."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float((c / n * np.log(n / c)).sum())


def mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """Mutual information I(a; b) in nats of two discrete label vectors, from their joint histogram.

    The plug-in estimate of the empirical distribution; labels may be any integers. Symmetric,
    0 for an independent pair, H(a) for b = a.
    """
    a, b = _as_vector(a, "a"), _as_vector(b, "b")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"a has {len(a)} labels and b {len(b)} (need equal, > 0)")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    na, nb = int(ia.max()) + 1, int(ib.max()) + 1
    joint = np.bincount(ia * nb + ib, minlength=na * nb).reshape(na, nb)  # (A, B)
    return float(_mi_from_counts(joint))


def discretize(codes: ArrayLike, bins: int = 20) -> np.ndarray:
    """Bin index (int64, (N, D)) of each code in ``bins`` equal-width bins per latent dimension.

    The bins of a dimension span its min to its max; bin i is [e_i, e_i+1) and the last bin also
    holds the max (np.histogram's rule). A constant dimension is all in bin 0.
    """
    z = _as_codes(codes)  # (N, D)
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins}")
    bins = int(bins)
    out = np.zeros(z.shape, np.int64)
    for j in range(z.shape[1]):  # D is small; each column has its own edges
        lo, hi = z[:, j].min(), z[:, j].max()
        if hi > lo:
            inner = np.linspace(lo, hi, bins + 1)[1:-1]  # (bins - 1,) edges between bins
            # side="right": a value on an edge goes to the bin above it; the max passes every
            # inner edge and lands in bin (bins - 1).
            out[:, j] = np.searchsorted(inner, z[:, j], side="right")
    return out


def mig(codes: ArrayLike, factors: ArrayLike, bins: int = 20) -> dict:
    """MIG: mean over factors of the gap between the two latents most informative of it, over its
    entropy (Chen et al., "Isolating Sources of Disentanglement in VAEs", arXiv:1802.04942).

    MIG = (1/K) sum_k (I(z_j(k); v_k) - max_{j != j(k)} I(z_j; v_k)) / H(v_k), j(k) = argmax_j
    I(z_j; v_k). The paper estimates I(z_j; v_k) from the encoder's q(z_j | x); here, as is common
    for deterministic codes, each latent is cut into ``bins`` equal-width bins (``discretize``)
    and I is the plug-in estimate from the joint histogram, H(v_k) the empirical entropy. With D = 1
    the second-best MI is 0. The plug-in MI is biased upwards on few images per bin, so a noise
    latent can get I > 0 and lower the gap. Factors with one value (H = 0) are left out of the mean
    (``skipped_factors``, and None in ``per_factor`` and ``top_latent``).

    Returns ``{"mig": float, "per_factor": [K], "mi": K x D nats, "top_latent": [K],
    "factor_entropy": [K] nats, "skipped_factors": [...], "bins": int}``.
    """
    z = discretize(codes, bins)  # (N, D)
    f = _as_factors(factors, len(z))  # (N, K)
    n_dims, n_factors = z.shape[1], f.shape[1]
    mi = np.zeros((n_factors, n_dims))
    entropy = np.zeros(n_factors)
    for k in range(n_factors):
        _, ids, counts = np.unique(f[:, k], return_inverse=True, return_counts=True)
        nv = len(counts)
        # One bincount for the D joint tables of factor k: cell (latent j, value, bin).
        cell = np.arange(n_dims) * (nv * bins) + ids[:, None] * bins + z  # (N, D)
        joint = np.bincount(cell.ravel(), minlength=n_dims * nv * bins).reshape(n_dims, nv, bins)
        mi[k] = _mi_from_counts(joint)  # (D,)
        entropy[k] = _entropy(counts)

    skipped = [k for k in range(n_factors) if entropy[k] == 0]
    if len(skipped) == n_factors:
        raise ValueError("every factor has a single value: MIG is undefined")
    per_factor: list[float | None] = []
    top: list[int | None] = []
    for k in range(n_factors):
        if k in skipped:
            per_factor.append(None)
            top.append(None)
            continue
        ranked = np.sort(mi[k])[::-1]  # (D,) descending
        second = ranked[1] if n_dims > 1 else 0.0
        per_factor.append(float((ranked[0] - second) / entropy[k]))
        top.append(int(np.argmax(mi[k])))
    scored = [g for g in per_factor if g is not None]
    return {
        "mig": float(np.mean(scored)),
        "per_factor": per_factor,
        "mi": mi.tolist(),
        "top_latent": top,
        "factor_entropy": entropy.tolist(),
        "skipped_factors": skipped,
        "bins": int(bins),
    }


def _draw_batches(
    f: np.ndarray, active: Sequence[int], n: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The votes' fixed factors (n,) and image rows (n, batch): factor k uniform over ``active``, a
    value v uniform over the values of k that occur, ``batch`` rows with f[:, k] == v drawn with
    replacement. Three vectorised draws from ``rng`` in this order: factors, values, rows."""
    # Rows of every active factor sorted by value, concatenated: group (k, v) is one slice.
    order, start, size, n_values = [], [], [], []
    for i, k in enumerate(active):
        rows = np.argsort(f[:, k], kind="stable")  # (N,)
        _, first, count = np.unique(f[rows, k], return_index=True, return_counts=True)
        order.append(rows)
        start.append(i * len(f) + first)
        size.append(count)
        n_values.append(len(count))
    order, start, size = np.concatenate(order), np.concatenate(start), np.concatenate(size)
    group_base = np.cumsum([0, *n_values[:-1]])  # (len(active),) first group of each factor

    pick = rng.integers(len(active), size=n)  # (n,) index into active
    group = group_base[pick] + rng.integers(0, np.asarray(n_values)[pick])  # (n,) uniform value
    offset = rng.integers(0, size[group][:, None], size=(n, batch))  # (n, batch) with replacement
    return np.asarray(active, np.int64)[pick], order[start[group][:, None] + offset]


def _argmin_variance(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per vote, the dimension (n,) of least variance (ddof=1) of z (N, D') over its rows (n, batch);
    ties go to the lowest dimension. Chunked so the (chunk, batch, D') gather stays ~8 MB."""
    n, batch = rows.shape
    chunk = max(1, 2**20 // (batch * z.shape[1]))
    out = np.empty(n, np.int64)
    for s in range(0, n, chunk):
        out[s : s + chunk] = z[rows[s : s + chunk]].var(axis=1, ddof=1).argmin(axis=1)  # (C, B, D')->(C,)
    return out


def factorvae_score(
    codes: ArrayLike,
    factors: ArrayLike,
    *,
    n_train: int = 5000,
    n_eval: int = 2500,
    batch: int = 64,
    seed: int = 0,
    prune: float = 0.05,
) -> dict:
    """FactorVAE score: accuracy of a majority-vote classifier that names the fixed factor from the
    latent of least variance (Kim & Mnih, "Disentangling by Factorising", arXiv:1802.05983).

    Each latent is divided by its std over all N codes (ddof=0); latents whose raw std is below
    ``prune`` (collapsed; any std of 0) are dropped. One vote: a factor k uniform among those with
    more than one value, a value v uniform among the values of k that occur, ``batch`` images with
    factor k = v drawn with replacement, and d = argmin of the normalised codes' per-latent variance
    (ddof=1) over them (ties: lowest d); the vote is (d, k). The classifier maps each latent d to
    its most frequent k over ``n_train`` votes (ties: lowest k); a kept latent that never won a
    train vote maps to the most frequent k over all train votes. ``score`` is its accuracy on
    ``n_eval`` fresh votes. All draws come from ``np.random.default_rng(seed)``.

    Returns ``{"score", "train_accuracy", "kept_dims": [...], "votes": K x D train-vote counts
    (columns of pruned latents are 0), "dim_to_factor": [D] (None for pruned), "skipped_factors",
    "reason": None, or why the score is 0}``.
    """
    z = _as_codes(codes)  # (N, D)
    f = _as_factors(factors, len(z))  # (N, K)
    for name, value, low in (("n_train", n_train, 1), ("n_eval", n_eval, 1), ("batch", batch, 2)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    n_train, n_eval, batch = int(n_train), int(n_eval), int(batch)
    if not prune >= 0:
        raise ValueError(f"prune must be >= 0, got {prune}")
    n_dims, n_factors = z.shape[1], f.shape[1]
    active = [k for k in range(n_factors) if f[:, k].min() != f[:, k].max()]
    if not active:
        raise ValueError("every factor has a single value: the FactorVAE score is undefined")
    skipped = [k for k in range(n_factors) if k not in active]

    std = z.std(axis=0)  # (D,) over all N codes, raw scale
    kept = np.flatnonzero((std >= prune) & (std > 0))  # (D',)
    if not len(kept):
        return {
            "score": 0.0,
            "train_accuracy": 0.0,
            "kept_dims": [],
            "votes": np.zeros((n_factors, n_dims), np.int64).tolist(),
            "dim_to_factor": [None] * n_dims,
            "skipped_factors": skipped,
            "reason": f"every latent has std < prune={prune} (collapsed): no latent left to vote",
        }

    zn = z[:, kept] / std[kept]  # (N, D') unit std per kept latent
    rng = np.random.default_rng(seed)
    k_vote, rows = _draw_batches(f, active, n_train + n_eval, batch, rng)  # (n,), (n, batch)
    d_vote = kept[_argmin_variance(zn, rows)]  # (n,) as an index into the D latents
    k_tr, d_tr, k_ev, d_ev = k_vote[:n_train], d_vote[:n_train], k_vote[n_train:], d_vote[n_train:]

    votes = np.bincount(k_tr * n_dims + d_tr, minlength=n_factors * n_dims).reshape(n_factors, n_dims)
    fallback = int(votes.sum(axis=1).argmax())
    predict = np.where(votes.sum(axis=0) > 0, votes.argmax(axis=0), fallback)  # (D,) latent -> factor
    return {
        "score": float((predict[d_ev] == k_ev).mean()),
        "train_accuracy": float((predict[d_tr] == k_tr).mean()),
        "kept_dims": kept.tolist(),
        "votes": votes.tolist(),
        "dim_to_factor": [int(predict[d]) if d in kept else None for d in range(n_dims)],
        "skipped_factors": skipped,
        "reason": None,
    }


def disentanglement(
    codes: ArrayLike, factors: ArrayLike, factor_names: Sequence[str] | None = None, seed: int = 0
) -> dict:
    """MIG and FactorVAE score of ``codes`` against ``factors`` with the default settings, as one
    JSON-serialisable dict ``{"mig": ..., "factorvae": ..., "factor_names": [...] or None}``.

    With ``factor_names`` (one per factor column) the MIG dict also holds ``per_factor_by_name``
    {name: gap or None} and ``top_latent_by_name``, and the FactorVAE dict ``dim_to_factor_name``.
    """
    z = _as_codes(codes)
    f = _as_factors(factors, len(z))
    names = None if factor_names is None else [str(s) for s in factor_names]
    if names is not None and (len(names) != f.shape[1] or len(set(names)) != len(names)):
        raise ValueError(f"need {f.shape[1]} distinct factor names, got {names}")
    m = mig(z, f)
    fv = factorvae_score(z, f, seed=seed)
    if names is not None:
        m["per_factor_by_name"] = dict(zip(names, m["per_factor"], strict=True))
        m["top_latent_by_name"] = dict(zip(names, m["top_latent"], strict=True))
        fv["dim_to_factor_name"] = [None if k is None else names[k] for k in fv["dim_to_factor"]]
    return {"mig": m, "factorvae": fv, "factor_names": names}
