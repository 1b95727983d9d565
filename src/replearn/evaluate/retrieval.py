"""Leave-one-out retrieval within a labelled set: Recall@K and MAP@R.

The zero-shot retrieval protocol of metric learning: an encoder trained on some classes is scored
on images of classes it never saw. Every item is a query against all the *other* items, ranked by
cosine similarity of L2-normalised float32 features. MAP@R follows Musgrave, Belongie and Lim,
"A Metric Learning Reality Check" (ECCV 2020, arXiv:2003.08505).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from replearn.errors import ReplearnError

ArrayLike = torch.Tensor | np.ndarray


def _ranked_others(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of each row's k largest entries, ordered by (similarity desc, index asc).

    ``topk`` leaves the order of equal values unspecified; here the items tied at the cut are the
    lowest-indexed ones and ties inside the list keep index order, so the ranking is a function
    of the similarities alone (as a stable sort of the whole row would give).
    """
    kth = sim.topk(k, dim=1).values[:, -1:]  # (B, 1) the k-th largest similarity
    above = sim > kth  # (B, N)
    tied = sim == kth
    room = k - above.sum(1, keepdim=True)  # (B, 1) how many tied items still fit
    keep = above | (tied & (tied.cumsum(1) <= room))  # exactly k per row
    idx = keep.nonzero()[:, 1].view(len(sim), k)  # (B, k) ascending index (nonzero is row-major)
    order = sim.gather(1, idx).sort(dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


@torch.no_grad()
def retrieval_metrics(
    feats: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 2, 4, 8), chunk: int = 1024
) -> dict:
    """Recall@K and MAP@R in percent (2 decimals) of leave-one-out retrieval within ``feats``.

    Each item queries all other items by cosine similarity (float32, on the device of ``feats``,
    ``chunk`` queries at a time). Equal similarities rank by item index, lowest first.
    R is the number of other items with the query's label; items with R = 0 (alone in their
    class) cannot be scored by either metric and are not queries. Recall@K: the fraction of
    queries with at least one same-label item among their K nearest others.
    MAP@R = (1/R) sum_{i<=R} P(i) rel(i), with P(i) the precision of the first i results.
    Returns ``{"recall@K": ..., "map@r": ..., "queries": int}``.
    """
    device = feats.device if isinstance(feats, torch.Tensor) else torch.device("cpu")
    x = torch.as_tensor(feats.detach() if isinstance(feats, torch.Tensor) else np.asarray(feats))
    x = F.normalize(x.to(device, torch.float32).flatten(1), dim=1)  # (N, D)
    y = torch.as_tensor(labels.detach() if isinstance(labels, torch.Tensor) else np.asarray(labels))
    y = y.to(device, torch.int64).flatten()  # (N,)
    ks = [int(k) for k in ks]
    if len(y) != len(x) or len(x) == 0:
        raise ValueError(f"{len(x)} features and {len(y)} labels (need equal, > 0)")
    if not ks or min(ks) < 1 or chunk < 1:
        raise ValueError(f"need ks >= 1 and chunk >= 1 (got {ks}, {chunk})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features hold NaN or inf")
    if y.min() < 0:
        raise ValueError("labels must be >= 0 (drop unlabelled items first)")
    r_all = torch.bincount(y)[y] - 1  # (N,) R: the other items sharing the label
    if not bool((r_all > 0).any()):
        raise ValueError("no item shares its label with another: nothing to retrieve")

    hits = {k: 0 for k in ks}
    ap_sum, n_q = 0.0, 0
    for start in range(0, len(x), chunk):
        rows = torch.arange(start, min(start + chunk, len(x)), device=device)
        q = rows[r_all[rows] > 0]  # queries with at least one positive
        if not len(q):
            continue
        r = r_all[q]  # (B,)
        sim = x[q] @ x.T  # (B, N)
        sim[torch.arange(len(q), device=device), q] = float("-inf")  # never retrieve the query itself
        depth = min(max(max(ks), int(r.max())), len(x) - 1)
        idx = _ranked_others(sim, depth)  # (B, depth)
        rel = y[idx] == y[q, None]  # (B, depth)
        for k in ks:
            hits[k] += int(rel[:, :k].any(1).sum())
        rank = torch.arange(1, depth + 1, device=device)  # (depth,)
        precision = rel.cumsum(1) / rank  # (B, depth) P(i)
        in_r = rank[None] <= r[:, None]  # only the first R results count
        ap = (precision * rel * in_r).sum(1, dtype=torch.float64) / r  # (B,)
        ap_sum += float(ap.sum())
        n_q += len(q)
    out = {f"recall@{k}": round(100.0 * hits[k] / n_q, 2) for k in ks}
    out["map@r"] = round(100.0 * ap_sum / n_q, 2)
    out["queries"] = n_q
    return out


def parse_classes(spec: str | Sequence[int | str], classes: Sequence[str] | None = None) -> list[int]:
    """Sorted class indices from ``"5-9"``, ``"5,6,7"``, ``"0-2,7"`` or names ``"sandal,shirt"``.

    Names are matched case-insensitively against ``classes`` (the data's class names, index =
    position); a whole item that names a class wins over reading it as a range ("T-shirt/top").
    A list (as a run's meta.json holds) is read item by item. Anything else is a ReplearnError.
    """
    if isinstance(spec, str) and not spec.strip():
        raise ReplearnError("no classes given", "write e.g. 5-9, 5,6,7,8,9 or class names")
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = {c.lower(): i for i, c in reversed(list(enumerate(classes or [])))}  # first of equal names
    hint = "write e.g. 5-9, 5,6,7,8,9" + (f" or class names such as {classes[0]}" if classes else "")
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ReplearnError(f"class {item!r} is not a class index or name", hint)
        if isinstance(item, int):
            lo = hi = item
        elif item.lower() in names:
            out.add(names[item.lower()])
            continue
        elif m := re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", item):
            lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        else:
            known = f"; the classes are {_listing(classes)}" if classes else ""
            raise ReplearnError(f"'{item}' is neither a class index, a range a-b nor a class name{known}", hint)
        if lo < 0 or lo > hi:
            raise ReplearnError(f"class range {lo}-{hi} is empty or negative", hint)
        if classes is not None and hi >= len(classes):
            raise ReplearnError(f"class {hi} does not exist: the data has classes 0-{len(classes) - 1}", hint)
        out.update(range(lo, hi + 1))
    if not out:
        raise ReplearnError(f"no classes in {spec!r}", hint)
    return sorted(out)


def _listing(classes: Sequence[str], at_most: int = 12) -> str:
    shown = ", ".join(classes[:at_most])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > at_most else "")
