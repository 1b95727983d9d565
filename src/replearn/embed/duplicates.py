"""Near-duplicate groups: images whose embeddings have cosine similarity at or above a threshold.

Pairs come from FAISS: an exact range search (inner product of L2-normalised vectors) up to
``EXACT_MAX`` images, above that the ``NEIGHBOURS`` nearest of each image in an HNSW graph, kept
when at or above the threshold. Groups are stars, not chains: the image with the most unassigned
near-duplicates becomes a representative and takes them all, then the next, so every member of a
group is within the threshold of its representative. Single linkage (connected components) would
chain A ~ B ~ C into one group although A and C differ, and in a dense region of the embedding
chains grow through distinct images; stars cannot.
"""

from __future__ import annotations

import csv
import heapq
import io
import time
from pathlib import Path

import numpy as np

from replearn.config import DuplicatesConfig, make_config, to_dict
from replearn.embed.export import load_embeddings
from replearn.embed.index import normalized
from replearn.errors import ReplearnError

EXACT_MAX = 200_000  # above: approximate pairs from an HNSW graph
NEIGHBOURS = 64  # per image on the approximate path (a group larger than this may split)
CHUNK = 4096  # query rows per range search, for progress


def similar_pairs(vectors: np.ndarray, threshold: float, *, exact_max: int = EXACT_MAX,
                  progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows of ``vectors`` (N, D) whose cosine similarity is >= ``threshold``:
    (i (P,), j (P,), similarity (P,) float32). Exact up to ``exact_max`` rows; above, the pairs
    among each row's ``NEIGHBOURS`` nearest in an HNSW graph. ``progress(done, total)`` is called
    after each chunk of rows."""
    import faiss

    x = normalized(vectors)  # (N, D)
    n, d = x.shape
    rows_i, rows_j, sims = [], [], []
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        # float32 rounding: an exact copy's similarity can land at 0.9999999 for a threshold of 1,
        # so the search radius keeps a margin of 1e-6 (range_search keeps similarities > radius).
        radius = float(threshold) - 1e-6
        for start in range(0, n, CHUNK):
            lims, dist, found = index.range_search(x[start : start + CHUNK], radius)  # (B+1,), (P,), (P,)
            lims = lims.astype(np.int64)
            query = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
            keep = found > query  # each pair once, never an image with itself
            rows_i.append(query[keep])
            rows_j.append(found[keep])
            sims.append(dist[keep])
            if progress:
                progress(min(start + CHUNK, n), n)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        index.hnsw.efSearch = max(128, NEIGHBOURS)
        for start in range(0, n, CHUNK):
            dist, found = index.search(x[start : start + CHUNK], NEIGHBOURS + 1)  # (B, K+1)
            query = np.arange(start, start + len(found))[:, None].repeat(found.shape[1], 1)
            keep = (found >= 0) & (found != query) & (dist >= threshold - 1e-6)
            a, b = query[keep], found[keep]
            rows_i.append(np.minimum(a, b))
            rows_j.append(np.maximum(a, b))
            sims.append(dist[keep])
            if progress:
                progress(min(start + CHUNK, n), n)
    i = np.concatenate(rows_i).astype(np.int64) if rows_i else np.zeros(0, np.int64)
    j = np.concatenate(rows_j).astype(np.int64) if rows_j else np.zeros(0, np.int64)
    s = np.concatenate(sims).astype(np.float32) if sims else np.zeros(0, np.float32)
    if n > exact_max and len(i):  # a pair found from both ends appears twice
        _, first = np.unique(i * n + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    return i, j, np.minimum(s, 1.0)


def star_groups(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> list[tuple[int, list[tuple[int, float]]]]:
    """Groups of near-duplicates from the pairs (i, j, sim) among ``n`` items: a list of
    (representative, [(member, similarity to the representative), ...]) with the representative
    first among its members (similarity 1), largest groups first.

    Greedy: the item with the most unassigned partners (ties: the larger summed similarity, then
    the lower row) becomes a representative and takes every unassigned partner; repeated while
    some unassigned item has an unassigned partner. Deterministic."""
    if len(i) == 0:
        return []
    a = np.concatenate([i, j])
    b = np.concatenate([j, i])
    s = np.concatenate([sim, sim]).astype(np.float64)
    order = np.lexsort((b, a))  # partners of each item, contiguous and by row
    a, b, s = a[order], b[order], s[order]
    start = np.searchsorted(a, np.arange(n + 1))  # (n+1,) partner ranges
    free = np.ones(n, bool)
    degree = np.diff(start).astype(np.int64)  # unassigned partners of each item
    weight = np.bincount(a, weights=s, minlength=n)  # (n,) their summed similarity
    # A heap with lazy updates: an entry is stale when its item's degree or weight has changed.
    heap = [(-int(degree[r]), -float(weight[r]), int(r)) for r in np.flatnonzero(degree)]
    heapq.heapify(heap)
    groups = []
    while heap:
        neg_deg, neg_w, rep = heapq.heappop(heap)
        if not free[rep] or degree[rep] == 0:
            continue
        if -neg_deg != degree[rep] or -neg_w != float(weight[rep]):
            heapq.heappush(heap, (-int(degree[rep]), -float(weight[rep]), rep))
            continue
        partners, psim = b[start[rep] : start[rep + 1]], s[start[rep] : start[rep + 1]]
        take = free[partners]
        members = [(rep, 1.0)] + [(int(m), float(v)) for m, v in zip(partners[take], psim[take], strict=True)]
        for m, _ in members:
            free[m] = False
            lo, hi = start[m], start[m + 1]
            np.subtract.at(degree, b[lo:hi], 1)  # each partner of m loses m as a free partner
            np.subtract.at(weight, b[lo:hi], s[lo:hi])
        groups.append((rep, members))
    groups.sort(key=lambda g: (-len(g[1]), g[0]))
    return groups


def find_duplicates(vectors: np.ndarray, threshold: float, *, exact_max: int = EXACT_MAX,
                    progress=None) -> list[tuple[int, list[tuple[int, float]]]]:
    """Near-duplicate groups among the rows of ``vectors`` (N, D) at cosine ``threshold``: see
    ``star_groups``; rows without a partner are in no group."""
    if not -1.0 <= threshold <= 1.0:
        raise ReplearnError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}",
                            "near-duplicates are usually above 0.9; try --threshold 0.95")
    i, j, s = similar_pairs(vectors, threshold, exact_max=exact_max, progress=progress)
    return star_groups(len(vectors), i, j, s)


def duplicates(embeddings: str | Path, config: DuplicatesConfig | None = None, **overrides) -> Path:
    """Write the near-duplicate groups of an embeddings file as CSV rows
    ``group,id,path,representative,similarity`` (largest groups first, the representative first in
    its group); ``replearn.duplicates("emb.npz", threshold=0.95, out="dups.csv")``."""
    from replearn.fileio import atomic_write_text

    cfg = make_config(DuplicatesConfig, None, {**to_dict(config or DuplicatesConfig()), **overrides})
    out = Path(cfg.out)
    if out.suffix.lower() != ".csv":
        raise ReplearnError(f"--out {out} is not a .csv file", "write e.g. --out dups.csv")
    emb = load_embeddings(embeddings)
    t0 = time.perf_counter()
    approx = len(emb) > EXACT_MAX
    print(f"comparing {len(emb)} embeddings at cosine >= {cfg.threshold}"
          + (f" (approximate: each image's {NEIGHBOURS} nearest)" if approx else " (exact)") + " ...", flush=True)
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        if total > 4 * CHUNK and (done == total or time.perf_counter() - shown[0] > 5):
            shown[0] = time.perf_counter()
            print(f"  {done}/{total} images", flush=True)

    groups = find_duplicates(emb.vectors, cfg.threshold, progress=progress)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "id", "path", "representative", "similarity"])
    for g, (rep, members) in enumerate(groups):
        for m, sim in members:
            w.writerow([g, emb.ids[m], emb.file_of(m), emb.ids[rep], f"{sim:.4f}"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(buf.getvalue(), out)
    extra = sum(len(m) - 1 for _, m in groups)
    print(f"{len(groups)} group(s) of near-duplicates holding {extra + len(groups)} of {len(emb)} images "
          f"({extra} could go, keeping one per group) in {time.perf_counter() - t0:.1f}s; wrote {out}")
    return out
