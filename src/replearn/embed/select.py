"""Which images to label: typical-and-diverse picks (TypiClust), coverage (k-center greedy), or random.

All strategies work on L2-normalised embeddings. Rows already labelled (``exclude``) are never
picked but count as covered: TypiClust spends no pick on a cluster that holds one, k-center greedy
starts from them.

- TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", arXiv:2202.02794): k-means
  into (labelled + budget) clusters (at most ``MAX_CLUSTERS``); then, pick by pick, the largest
  cluster with the fewest labelled or picked rows (clusters of ``MIN_CLUSTER_SIZE`` rows or fewer
  are skipped while others remain) gives its most typical free row: typicality is
  1 / (mean distance to the row's ``TYPICALITY_K`` nearest neighbours within the cluster).
- k-center greedy (Sener & Savarese, arXiv:1708.00489): the row farthest from everything chosen
  so far, repeatedly; without labelled rows the first pick is a seeded random row.
- random: a seeded uniform draw without replacement among the free rows.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from replearn.config import SelectConfig, make_config, to_dict
from replearn.embed.export import Embeddings, load_embeddings
from replearn.embed.index import normalized
from replearn.errors import ReplearnError

STRATEGIES = ("typiclust", "kcenter", "random")
MAX_CLUSTERS = 500  # the paper's cap on k-means clusters
MIN_CLUSTER_SIZE = 5  # the paper's: clusters this small or smaller get no pick while others remain
TYPICALITY_K = 20  # neighbours of the typicality estimate (fewer in a smaller cluster)
FULL_KMEANS_MAX = 20_000_000  # rows x clusters up to which full k-means runs; above, mini-batch
BLOCK = 16_000_000  # distance-matrix entries per block (64 MB of float32)

Progress = Callable[[int, int], None]


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared euclidean distances (A, B) between unit rows of ``a`` (A, D) and ``b`` (B, D)."""
    return np.maximum(2.0 - 2.0 * (a @ b.T), 0.0)


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster of each row of ``x`` (N, D): int64 (N,). Full k-means (one k-means++ start) up to
    ``FULL_KMEANS_MAX`` rows x clusters, mini-batch k-means above."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(x) * n_clusters <= FULL_KMEANS_MAX:
        # One start: Fashion-MNIST, demo SimCLR features, 40 labels, seeds 3-8 (not the bench's 0-2):
        # probe top-1 with n_init 1 / 3 / 10 = 64.1 / 62.7 / 66.0 (random picks 56.8), k-means
        # 5 / 13 / 40 s on 2 shared cores. The gain of 10 starts is within the seed spread.
        km = KMeans(n_clusters, n_init=1, random_state=seed)
    else:
        km = MiniBatchKMeans(n_clusters, batch_size=4096, n_init=3, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


def mean_knn_distance(x: np.ndarray, rows: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """Mean euclidean distance (R,) of each row in ``rows`` (R,) to its ``k`` nearest rows among
    ``members`` (M,) of ``x`` (N, D), itself not counted (``rows`` must be among ``members``)."""
    import torch

    ref = x[members]  # (M, D)
    order = np.argsort(members)
    self_col = order[np.searchsorted(members, rows, sorter=order)]  # (R,) each row's column in ref
    out = np.empty(len(rows), np.float64)
    step = max(1, BLOCK // max(len(members), 1))
    for s in range(0, len(rows), step):
        chunk = rows[s : s + step]
        d2 = torch.from_numpy(_sq_dist(x[chunk], ref))  # (C, M)
        d2[torch.arange(len(chunk)), torch.from_numpy(self_col[s : s + step])] = torch.inf  # not its own neighbour
        nearest = torch.topk(d2, k, dim=1, largest=False).values  # (C, k); faster than np.partition
        out[s : s + step] = nearest.sqrt().mean(1).double().numpy()
    return out


def typiclust(x: np.ndarray, budget: int, excluded: np.ndarray, seed: int, progress: Progress | None = None) -> np.ndarray:
    """TypiClust picks (budget,) from unit rows ``x`` (N, D); ``excluded`` bool (N,) rows count as labelled."""
    n = len(x)
    n_clusters = min(int(excluded.sum()) + budget, MAX_CLUSTERS, n)
    cluster = kmeans_labels(x, n_clusters, seed)  # (N,)
    size = np.bincount(cluster, minlength=n_clusters)  # (K,)
    covered = np.bincount(cluster[excluded], minlength=n_clusters)  # (K,) labelled or picked rows
    free = ~excluded
    free_count = np.bincount(cluster[free], minlength=n_clusters)  # (K,)
    typicality: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cluster -> (free rows, mean kNN distance)
    picks = []
    for _ in range(budget):
        open_ = free_count > 0
        if (open_ & (size > MIN_CLUSTER_SIZE)).any():
            open_ &= size > MIN_CLUSTER_SIZE
        ids = np.flatnonzero(open_)
        c = int(ids[np.lexsort((ids, -size[ids], covered[ids]))[0]])  # fewest covered, then largest
        if c not in typicality:
            members = np.flatnonzero(cluster == c)
            cand = members[free[members]]
            k = min(TYPICALITY_K, len(members) - 1)
            typicality[c] = (cand, mean_knn_distance(x, cand, members, k) if k > 0 else np.zeros(len(cand)))
        cand, dist = typicality[c]
        dist = np.where(free[cand], dist, np.inf)  # rows picked before in this cluster are gone
        row = int(cand[np.argmin(dist)])  # most typical: smallest mean distance to its neighbours
        picks.append(row)
        free[row] = False
        free_count[c] -= 1
        covered[c] += 1
        if progress:
            progress(len(picks), budget)
    return np.asarray(picks, np.int64)


def kcenter_greedy(x: np.ndarray, budget: int, excluded: np.ndarray, seed: int, progress: Progress | None = None) -> np.ndarray:
    """k-center greedy picks (budget,) from unit rows ``x`` (N, D), starting from the ``excluded``
    bool (N,) rows, or from one seeded random free row when there are none."""
    n = len(x)
    min_d2 = np.full(n, np.inf, np.float32)  # squared distance to the chosen set
    done = excluded.copy()
    lab = np.flatnonzero(excluded)
    step = max(1, BLOCK // n)
    for s in range(0, len(lab), step):
        min_d2 = np.minimum(min_d2, _sq_dist(x, x[lab[s : s + step]]).min(1))
    picks = []
    if len(lab) == 0:
        picks.append(int(np.random.default_rng(seed).choice(np.flatnonzero(~done))))
    while len(picks) < budget:
        if picks:
            last = picks[-1]
            done[last] = True
            min_d2 = np.minimum(min_d2, np.maximum(2.0 - 2.0 * (x @ x[last]), 0.0))  # (N,)
        picks.append(int(np.argmax(np.where(done, -1.0, min_d2))))
        if progress:
            progress(len(picks), budget)
    return np.asarray(picks, np.int64)


def select_indices(vectors: np.ndarray, budget: int, strategy: str = "typiclust", seed: int = 0,
                   exclude: np.ndarray | None = None, progress: Progress | None = None) -> np.ndarray:
    """Rows of ``vectors`` (N, D) to label next: int64 (budget,), in pick order, deterministic given
    ``seed``. ``exclude`` bool (N,) marks rows already labelled: never picked, counted as covered.
    ``progress(done, budget)`` is called after each pick (typiclust, kcenter)."""
    if strategy not in STRATEGIES:
        raise ReplearnError(f"unknown selection strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    x = normalized(np.asarray(vectors).reshape(len(vectors), -1))  # (N, D)
    excluded = np.zeros(len(x), bool) if exclude is None else np.asarray(exclude, bool).reshape(-1)
    if len(excluded) != len(x):
        raise ValueError(f"exclude has {len(excluded)} entries for {len(x)} vectors")
    check_budget(budget, len(x), int(excluded.sum()))
    if strategy == "random":
        return np.random.default_rng(seed).choice(np.flatnonzero(~excluded), budget, replace=False).astype(np.int64)
    pick = typiclust if strategy == "typiclust" else kcenter_greedy
    return pick(x, budget, excluded, seed, progress)


def check_budget(budget: int, n: int, n_excluded: int) -> None:
    """A ReplearnError unless 1 <= ``budget`` <= the ``n`` - ``n_excluded`` rows free to pick."""
    available = n - n_excluded
    if not 1 <= budget <= available:
        raise ReplearnError(
            f"budget {budget} is not possible: {available} image(s) are available "
            f"({n} embedded, {n_excluded} excluded as labelled)",
            f"ask for 1 to {available}" if available else "every image is labelled already",
        )


def read_exclude(path: str | Path, emb: Embeddings) -> np.ndarray:
    """Rows of ``emb`` listed in the CSV ``path`` as bool (N,): its column ``id`` (or ``path``) holds
    ids, or, for embeddings of a folder, image paths (absolute, or relative to the working folder)."""
    p = Path(path)
    if not p.is_file():
        raise ReplearnError(f"no --exclude file {p}", "give a CSV with a column 'id' of the images already labelled")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        column = "id" if "id" in columns else "path" if "path" in columns else None
        if column is None:
            raise ReplearnError(f"{p} has no column 'id' or 'path' (it has {', '.join(columns) or 'no header'})",
                                "the first line must name the columns, e.g. 'id'")
        values = [(r.get(column) or "").strip() for r in reader]
    values = [v for v in values if v]
    row_of = emb.row_of()
    by_file = {os.path.abspath(emb.file_of(i)): i for i in range(len(emb))} if os.path.isdir(emb.meta.get("data") or "") else {}
    mask = np.zeros(len(emb), bool)
    unknown = []
    for v in values:
        r = row_of.get(v, by_file.get(os.path.abspath(v)) if by_file else None)
        if r is None:
            unknown.append(v)
        else:
            mask[r] = True
    if unknown:
        raise ReplearnError(
            f"{p}: {column} {unknown[0]!r} is not in the embeddings"
            + (f" (nor are {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; {len(values) - len(unknown)} of {len(values)} matched",
            "list ids as the embeddings file holds them (e.g. from a 'replearn select' CSV), or embed those images too",
        )
    return mask


def select(embeddings: str | Path, config: SelectConfig | None = None, **overrides) -> Path:
    """Write the images to label next as CSV rows ``rank,id,path,label`` (label empty where unknown);
    ``replearn.select("emb.npz", budget=40, strategy="typiclust", out="to_label.csv")``."""
    from replearn.fileio import atomic_write_text

    cfg = make_config(SelectConfig, None, {**to_dict(config or SelectConfig()), **overrides})
    out = Path(cfg.out)
    if out.suffix.lower() != ".csv":
        raise ReplearnError(f"--out {out} is not a .csv file", "write e.g. --out to_label.csv")
    emb = load_embeddings(embeddings)
    exclude = read_exclude(cfg.exclude, emb) if cfg.exclude else None
    n_ex = 0 if exclude is None else int(exclude.sum())
    check_budget(cfg.budget, len(emb), n_ex)  # before the start line: a bad budget is the only line
    print(f"choosing {cfg.budget} of {len(emb) - n_ex} images by {cfg.strategy} ...", flush=True)
    t0 = time.perf_counter()
    shown = [t0]

    def progress(done: int, total: int) -> None:
        if done < total and time.perf_counter() - shown[0] > 5:
            shown[0] = time.perf_counter()
            print(f"  {done}/{total} picked", flush=True)

    rows = select_indices(emb.vectors, cfg.budget, cfg.strategy, cfg.seed, exclude, progress)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "id", "path", "label"])
    for rank, r in enumerate(rows.tolist(), 1):
        w.writerow([rank, emb.ids[r], emb.file_of(r), "" if emb.labels[r] < 0 else int(emb.labels[r])])
    atomic_write_text(buf.getvalue(), out)
    print(f"picked {len(rows)} of {len(emb) - n_ex} images by {cfg.strategy} (seed {cfg.seed}"
          + (f", {n_ex} already labelled" if n_ex else "") + f") in {time.perf_counter() - t0:.1f}s; wrote {out}")
    return out
