"""Cosine-similarity search over embeddings with FAISS: build, save, load and query an index.

Vectors are L2-normalised and searched by inner product, so a score is the cosine similarity (a
zero vector stays zero and scores 0 against everything). Three kinds of index:

- ``exact``: ``IndexFlatIP``, a brute-force scan (one BLAS matrix product per query batch).
- ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin, arXiv:1603.09320), a navigable small-world graph.
- ``ivf``: ``IndexIVFFlat``, k-means cells (nlist ~ 4 sqrt(N)), ``nprobe`` cells scanned per query.

The approximate settings below were chosen on the hardest case, 100k random Gaussian 128-d vectors
(no structure to exploit), for recall@10 >= 0.95 against the exact result: HNSW M=48 reached 0.93
at efSearch 256 and 0.976-0.979 at 384 (two seeds, and ``bench/search.py``); IVF (1265 cells) 0.70
at 256 cells scanned, 0.956 at 768, 0.968 at 823 (the 0.65 used). On such data and one thread
both are slower than the exact scan at 100k (see docs/benchmarks.md): the scan costs N x D
multiply-adds per query, about 3 ms at a million 128-d vectors on one core, so ``auto`` stays exact
up to a million vectors and takes HNSW only above, where the scan's time and memory grow past it.

``auto`` is exact up to ``exact_max`` vectors and HNSW above. An index file holds the FAISS index,
the ids, labels and the embeddings file's ``meta`` (run, data, split, image_size, channels) plus the
kind and its parameters, so ``search --query image.png`` can embed an image with the same encoder.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from replearn.config import IndexConfig, SearchConfig, make_config, to_dict
from replearn.embed.export import Embeddings, load_embeddings
from replearn.errors import ReplearnError

FORMAT = "replearn-index"
FORMAT_VERSION = 1
EXACT_MAX = 1_000_000  # auto: exact up to this many vectors, HNSW above
HNSW_M = 48  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 384  # FAISS searches with max(efSearch, k)
IVF_CELLS_PER_SQRT_N = 4  # nlist = 4 sqrt(N)
IVF_MIN_POINTS_PER_CELL = 39  # FAISS's k-means warns below this many training points per centroid
IVF_PROBE_FRACTION = 0.65  # of the cells scanned per query
KINDS = ("auto", "exact", "hnsw", "ivf")
_MAKE_INDEX_HINT = "make one with 'replearn index EMBEDDINGS --out emb.index'"


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit length as contiguous float32; zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def resolve_kind(kind: str, n: int, exact_max: int = EXACT_MAX) -> str:
    """The index kind that ``kind`` means for ``n`` vectors ("auto" -> "exact" or "hnsw")."""
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        raise ReplearnError(f"unknown index kind {kind!r}",
                            (f"did you mean '{close[0]}'? " if close else "") + f"use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "exact" if n <= exact_max else "hnsw"
    return kind


def build_faiss_index(vectors: np.ndarray, kind: str = "auto", exact_max: int = EXACT_MAX, seed: int = 0):
    """A FAISS inner-product index over the L2-normalised rows of ``vectors`` (N, D): see the module
    docstring for the kinds. ``seed`` seeds the IVF k-means (HNSW levels use FAISS's fixed seed)."""
    import faiss

    x = normalized(vectors)  # (N, D)
    n, d = x.shape
    if n == 0:
        raise ReplearnError("no vectors to index", "give an embeddings file with at least one row")
    kind = resolve_kind(kind, n, exact_max)
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        nlist = max(1, min(round(IVF_CELLS_PER_SQRT_N * math.sqrt(n)), n // IVF_MIN_POINTS_PER_CELL))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1  # nlist is already capped above; no FAISS warning
        index.train(x)
        index.nprobe = max(1, math.ceil(IVF_PROBE_FRACTION * nlist))
    index.add(x)
    if kind == "ivf":
        index.make_direct_map()  # row -> vector, for search_id's reconstruct
    return index


def index_params(index) -> dict:
    """The kind and search parameters of a FAISS index built by ``build_faiss_index``."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return {"kind": "hnsw", "M": int(index.hnsw.nb_neighbors(1)), "ef_construction": int(index.hnsw.efConstruction),
                "ef_search": int(index.hnsw.efSearch)}
    if isinstance(index, faiss.IndexIVF):
        return {"kind": "ivf", "nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    return {"kind": "exact"}


def _search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities float32 (M, k), rows int64 (M, k)) of already normalised ``queries``; a row of
    -1 (similarity -inf in FAISS) where an approximate index found fewer than k, similarity 0 there."""
    sims, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    rows = rows.astype(np.int64)
    sims = np.where(rows >= 0, np.clip(sims, -1.0, 1.0), 0.0).astype(np.float32)  # float32 rounding past 1
    return sims, rows


def neighbours(base: np.ndarray, queries: np.ndarray, k: int, exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of each row of ``queries`` (M, D) among the rows of ``base`` (N, D): (similarities
    float32 (M, k'), rows int64 (M, k')) sorted descending, k' = min(k, N). Exact for N <= ``exact_max``,
    HNSW above (rows of -1 where the graph found fewer than k')."""
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"base {base.shape} and queries {queries.shape} must be (N, D) and (M, D)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    index = build_faiss_index(base, "auto", exact_max)
    return _search(index, normalized(queries), min(k, len(base)))


@dataclass
class EmbeddingIndex:
    """A FAISS index over ``len(ids)`` vectors with their ``ids``, ``labels`` int64 (N,) (-1 where
    unknown) and ``meta``: the embeddings file's (run, data, split, image_size, channels) plus
    ``kind``, the index parameters and ``dim``. Row i of the index is ids[i]."""

    index: object
    ids: list[str]
    labels: np.ndarray
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    file_of = Embeddings.file_of  # the same rule (folder data: the image file; else the id); reads .meta, .ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "exact")

    @classmethod
    def build(cls, emb: Embeddings, kind: str = "auto", exact_max: int = EXACT_MAX, seed: int = 0) -> EmbeddingIndex:
        """Index the vectors of an embeddings file."""
        index = build_faiss_index(emb.vectors, kind, exact_max, seed)
        meta = {**emb.meta, **index_params(index), "dim": emb.dim}
        if emb.path is not None:
            meta["embeddings"] = str(Path(emb.path).resolve())
        return cls(index, list(emb.ids), np.asarray(emb.labels, dtype=np.int64), meta)

    def save(self, path: str | Path) -> Path:
        """Write one file (an .npz holding the serialised FAISS index, ids, labels, meta), atomically."""
        import faiss

        from replearn.fileio import atomic_write_bytes

        path = Path(path)
        buf = io.BytesIO()
        np.savez(buf, format=np.asarray(FORMAT), version=np.asarray(FORMAT_VERSION),
                 index=faiss.serialize_index(self.index), ids=np.asarray(self.ids, dtype=str),
                 labels=self.labels, meta=np.asarray(json.dumps(self.meta)))
        atomic_write_bytes(buf.getvalue(), path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        """Read an index file written by ``save``; a missing, corrupt or foreign file is a one-line
        ReplearnError."""
        import faiss

        path = Path(path)
        if path.is_dir():
            raise ReplearnError(f"{path} is a folder, not an index file", "give the file 'replearn index' wrote")
        if not path.is_file():
            raise ReplearnError(f"no index file {path}", _MAKE_INDEX_HINT)
        try:
            with np.load(path, allow_pickle=False) as z:
                files = set(z.files)
                if "format" not in files or str(z["format"]) != FORMAT:
                    looks = "embeddings" in files and "ids" in files
                    raise ReplearnError(
                        f"{path} is not a replearn index" + (" but an embeddings file" if looks else ""),
                        f"index it first: 'replearn index {path} --out emb.index'" if looks else _MAKE_INDEX_HINT,
                    )
                version = int(z["version"])
                if version > FORMAT_VERSION:
                    raise ReplearnError(f"{path} is an index of format version {version}, this replearn reads "
                                        f"up to {FORMAT_VERSION}", "upgrade replearn, or index the embeddings again")
                index = faiss.deserialize_index(z["index"])
                ids = [str(i) for i in z["ids"].tolist()]
                labels = z["labels"].astype(np.int64)
                meta = json.loads(str(z["meta"]))
        except ReplearnError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, said in one line
            first = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise ReplearnError(f"{path} is not a readable replearn index ({first})", _MAKE_INDEX_HINT) from None
        if index.ntotal != len(ids) or len(labels) != len(ids) or not isinstance(meta, dict):
            raise ReplearnError(f"{path} is damaged: {index.ntotal} vectors but {len(ids)} ids", _MAKE_INDEX_HINT)
        return cls(index, ids, labels, meta, path)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k of each query (M, D): (similarities float32 (M, k'), rows int64 (M, k')),
        k' = min(k, len(self)), best first; rows of -1 where an approximate index found fewer."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ReplearnError(
                f"query vectors of shape {q.shape} do not match the index's dimension {self.dim}",
                "embed the query with the run the index was built from (meta 'run' of the index)",
            )
        if k < 1:
            raise ReplearnError(f"k must be at least 1, got {k}")
        return _search(self.index, normalized(q), min(k, len(self)))

    def row_of_id(self, id_: str) -> int:
        """The row of ``id_``; an unknown id is a ReplearnError naming ids it begins, or else the
        closest ids by difflib."""
        try:
            return self.ids.index(id_)
        except ValueError:
            close = [i for i in self.ids if i.startswith(id_)][:3] or difflib.get_close_matches(id_, self.ids, 3, 0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
                f"ids look like {self.ids[0]!r}" + (f", {self.ids[1]!r}" if len(self.ids) > 1 else ""))
            raise ReplearnError(f"no id {id_!r} among the {len(self)} indexed items", hint) from None

    def search_id(self, id_: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest (similarities (k',), rows (k',)) of an indexed item, itself excluded;
        k' = min(k, len(self) - 1)."""
        row = self.row_of_id(id_)
        k = min(k, len(self) - 1)
        if k < 1:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        vector = self.index.reconstruct(row)[None]  # (1, D), already normalised
        sims, rows = _search(self.index, vector, min(k + 1, len(self)))
        keep = (rows[0] != row) & (rows[0] >= 0)  # an exact copy may outrank the item itself
        return sims[0][keep][:k], rows[0][keep][:k]

    def search_image(self, path: str | Path, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest (similarities (k',), rows (k',)) of an image file, embedded by the run the
        embeddings came from (``meta["run"]``), read and resized like that run's folder images."""
        import torch

        from replearn.data.imageset import ImageSet
        from replearn.data.sources import _decode_file
        from replearn.dist import default_device
        from replearn.evaluate.features import extract_features
        from replearn.nn import load_encoder

        path = Path(path)
        if not path.is_file():
            raise ReplearnError(f"no image file {path}", "give the path of an image (.png, .jpg, ...)")
        run = self.meta.get("run")
        if not run:
            raise ReplearnError(f"the index {self.path or ''} does not name the run its embeddings came from",
                                "search it by --id, or embed with 'replearn embed' and index again")
        device = default_device()
        encoder, spec = load_encoder(run, map_location=device)
        image, reason = _decode_file(str(path), int(spec["image_size"]))  # uint8 (1 or 3, S, S)
        if image is None:
            raise ReplearnError(f"cannot read the image {path}: {reason}", "give a readable image file")
        channels = int(spec["channels"])
        if image.shape[0] < channels:  # a gray image for a colour encoder
            image = image.expand(channels, -1, -1)
        elif image.shape[0] > channels:  # a colour image for a gray encoder: ITU-R 601 luma, as PIL's convert("L")
            luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            image = (image.float() * luma).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        query = ImageSet(ids=[path.name], labels=torch.tensor([-1]), name="query", channels=channels,
                         size=int(spec["image_size"]), images=image[None].contiguous(),
                         mean=tuple(spec["mean"]), std=tuple(spec["std"]))
        # the precision the indexed embeddings were made with, so an indexed image finds itself at 1
        vector = extract_features(encoder, query, batch_size=1, precision=self.meta.get("precision", "32")).numpy()  # (1, D)
        sims, rows = self.search_vectors(vector, k)
        keep = rows[0] >= 0
        return sims[0][keep], rows[0][keep]


def index(embeddings: str | Path, config: IndexConfig | None = None, **overrides) -> Path:
    """Build a cosine search index of an embeddings file and write it to ``out``:
    ``replearn.index("emb.npz", out="emb.index", kind="auto")``; returns the index path."""
    cfg = make_config(IndexConfig, None, {**to_dict(config or IndexConfig()), **overrides})
    emb = load_embeddings(embeddings)
    resolve_kind(cfg.kind, len(emb), cfg.exact_max)  # a bad kind fails before any work
    t0 = time.perf_counter()
    built = EmbeddingIndex.build(emb, cfg.kind, cfg.exact_max)
    out = built.save(cfg.out)
    params = ", ".join(f"{k}={v}" for k, v in index_params(built.index).items() if k != "kind")
    print(f"indexed {len(built)} vectors of dimension {built.dim} ({built.kind}{': ' + params if params else ''}) "
          f"in {time.perf_counter() - t0:.1f}s; wrote {out}")
    return out


def search(index_path: str | Path, config: SearchConfig | None = None, **overrides) -> list[dict]:
    """The nearest neighbours of an image (``query``) or an indexed item (``id``) in an index file:
    prints a table and returns rows {rank, id, path, similarity}; with ``out``, also writes them as
    CSV. ``replearn.search("emb.index", query="photo.jpg", k=10)``."""
    cfg = make_config(SearchConfig, None, {**to_dict(config or SearchConfig()), **overrides})
    if (cfg.query is None) == (cfg.id is None):
        raise ReplearnError("give exactly one of --query IMAGE or --id ID",
                            "--query embeds an image file; --id searches from an item already in the index")
    if cfg.k < 1:
        raise ReplearnError(f"k must be at least 1, got {cfg.k}", "e.g. --k 10")
    if cfg.out is not None and Path(cfg.out).suffix.lower() != ".csv":
        raise ReplearnError(f"--out {cfg.out} is not a .csv file", "write e.g. --out neighbours.csv")
    idx = EmbeddingIndex.load(index_path)
    if cfg.id is not None:
        sims, rows = idx.search_id(cfg.id, cfg.k)
        what = f"id {cfg.id!r}"
    else:
        sims, rows = idx.search_image(cfg.query, cfg.k)
        what = str(cfg.query)
    found = [{"rank": r + 1, "id": idx.ids[row], "path": idx.file_of(int(row)), "similarity": float(s)}
             for r, (s, row) in enumerate(zip(sims.tolist(), rows.tolist(), strict=True))]
    exact = "exact" if idx.kind == "exact" else f"approximate, {idx.kind}"
    print(f"{len(found)} nearest of {what} among {len(idx)} ({exact}):")
    print(_table(found))
    if cfg.out is not None:
        from replearn.fileio import atomic_write_text

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rank", "id", "path", "similarity"])
        w.writerows([f["rank"], f["id"], f["path"], f"{f['similarity']:.4f}"] for f in found)
        atomic_write_text(buf.getvalue(), cfg.out)
        print(f"wrote {cfg.out}")
    return found


def _table(found: list[dict]) -> str:
    cells = [["rank", "id", "path", "similarity"]]
    cells += [[str(f["rank"]), f["id"], f["path"], f"{f['similarity']:.4f}"] for f in found]
    widths = [max(len(row[c]) for row in cells) for c in range(4)]
    return "\n".join("  ".join(v.rjust(w) if c in (0, 3) else v.ljust(w) for c, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in cells)
