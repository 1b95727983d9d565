"""Export embeddings with ids and labels, as .npz or .parquet, and read them back checked.

An embeddings file holds float32 vectors (N, D), one id per vector (unique), an int64 label per
vector (-1 where unknown) and a JSON ``meta`` dict saying where they came from: ``run`` (the
encoder's run folder, absolute), ``data`` (the data source as given; absolute for a folder),
``split``, ``image_size``, ``channels``, ``precision`` (of the encoder pass). ``index``, ``search``,
``duplicates``, ``select`` and the report all read files through ``load_embeddings``, so a wrong
file is the same one-line error everywhere.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from replearn.config import EmbedConfig, make_config, to_dict
from replearn.dist import default_device
from replearn.errors import ReplearnError


@dataclass
class Embeddings:
    """The content of an embeddings file: ``vectors`` float32 (N, D), ``ids`` (N unique strings),
    ``labels`` int64 (N,) with -1 where unknown, ``meta`` (see the module docstring)."""

    vectors: np.ndarray
    ids: list[str]
    labels: np.ndarray
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def row_of(self) -> dict[str, int]:
        """id -> row."""
        return {i: r for r, i in enumerate(self.ids)}

    def file_of(self, i: int) -> str:
        """The image file of row ``i`` when the embeddings come from a folder (its id is the path
        inside the folder), else the id itself."""
        data = self.meta.get("data")  # a folder has no splits: its ids are never prefixed by one
        return os.path.join(data, self.ids[i]) if data and os.path.isdir(data) else self.ids[i]


def _write(path: Path, emb: np.ndarray, ids: list[str], labels: np.ndarray, meta: dict | None = None) -> None:
    from replearn.fileio import atomic_write_bytes

    meta_json = json.dumps(meta or {})
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import io

        buf = io.BytesIO()
        np.savez(buf, embeddings=emb, ids=np.asarray(ids, dtype=str), labels=labels, meta=np.asarray(meta_json))
        atomic_write_bytes(buf.getvalue(), path)
    elif suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ReplearnError("writing .parquet needs pyarrow", "pip install pyarrow, or write .npz") from None
        table = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "label": pa.array(labels, pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
            }
        ).replace_schema_metadata({"replearn": meta_json})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(sink.getvalue().to_pybytes(), path)
    else:
        raise ReplearnError(f"unknown output format {suffix or path.name!r}", "end --out with .npz or .parquet")


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(embeddings float32 (N, D), ids, labels int64 with -1 where unknown) from .npz or .parquet."""
    e = load_embeddings(path)
    return e.vectors, e.ids, e.labels


def _bad(path: Path, what: str) -> ReplearnError:
    return ReplearnError(
        f"{path} is not an embeddings file: {what}",
        "make one with 'replearn embed RUN --data DATA --out emb.npz' (or .parquet)",
    )


def load_embeddings(path: str | Path, *, min_rows: int = 1) -> Embeddings:
    """Read and check an embeddings file (.npz or .parquet); every problem is a one-line ReplearnError.

    Checked: the file exists and is a readable .npz/.parquet with embeddings, ids and labels; the
    vectors are a finite 2-D float array with one row per id; ids are unique; at least ``min_rows``.
    """
    path = Path(path)
    if path.is_dir():
        raise ReplearnError(f"{path} is a folder, not an embeddings file",
                            "give the .npz or .parquet that 'replearn embed' wrote")
    if not path.is_file():
        raise ReplearnError(f"no embeddings file {path}", "make one with 'replearn embed RUN --data DATA --out emb.npz'")
    suffix = path.suffix.lower()
    meta: dict = {}
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = {"embeddings", "ids"} - set(z.files)
                if missing:
                    raise _bad(path, f"it has no {', '.join(sorted(missing))} (it holds {', '.join(z.files) or 'nothing'})")
                emb, ids = z["embeddings"], z["ids"]
                labels = z["labels"] if "labels" in z.files else np.full(len(ids), -1)
                if "meta" in z.files:
                    meta = json.loads(str(z["meta"]))
        elif suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ReplearnError("reading .parquet needs pyarrow", "pip install pyarrow, or use .npz") from None
            t = pq.read_table(path)
            missing = {"embedding", "id"} - set(t.column_names)
            if missing:
                raise _bad(path, f"it has no column {', '.join(sorted(missing))} (it has {', '.join(t.column_names)})")
            col = t.column("embedding").combine_chunks()
            if not hasattr(col, "flatten"):
                raise _bad(path, "its 'embedding' column is not a list of numbers")
            flat = np.asarray(col.flatten(), dtype=np.float32)
            if t.num_rows and flat.size % t.num_rows:
                raise _bad(path, "its embeddings have different lengths")
            emb = flat.reshape(t.num_rows, -1)
            ids = np.asarray(t.column("id").to_pylist(), dtype=object)
            labels = t.column("label").to_numpy() if "label" in t.column_names else np.full(t.num_rows, -1)
            raw = (t.schema.metadata or {}).get(b"replearn")
            meta = json.loads(raw) if raw else {}
        else:
            raise ReplearnError(f"unknown embeddings format {suffix or path.name!r}", "give a .npz or .parquet file")
    except ReplearnError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, said in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _bad(path, f"it cannot be read ({first})") from None
    if emb.dtype.kind not in "fiu" or emb.ndim != 2:
        raise _bad(path, f"embeddings must be a 2-D array of numbers (N, D), got shape {emb.shape}, dtype {emb.dtype}")
    if ids.ndim != 1 or len(ids) != len(emb):
        raise _bad(path, f"{len(emb)} embeddings but {ids.size} ids")
    if labels.ndim != 1 or len(labels) != len(emb) or labels.dtype.kind not in "iu":
        raise _bad(path, f"labels must be {len(emb)} integers, got shape {labels.shape}, dtype {labels.dtype}")
    if emb.shape[1] == 0:
        raise _bad(path, "its embeddings have dimension 0")
    emb = emb.astype(np.float32, copy=False)
    if not np.isfinite(emb).all():
        raise ReplearnError(f"{path} holds NaN or inf embeddings", "embed again with a run whose training did not diverge")
    ids = [str(i) for i in ids.tolist()]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise _bad(path, f"the id {dup!r} appears more than once")
    if len(ids) < min_rows:
        raise ReplearnError(f"{path} holds {len(ids)} embeddings, need at least {min_rows}",
                            "embed more images (or lower the number asked for)")
    return Embeddings(emb, ids, labels.astype(np.int64), meta if isinstance(meta, dict) else {}, path)


def embed(run: str, config: EmbedConfig | None = None, **overrides) -> Path:
    """Embed a data source with a run's encoder: ``replearn.embed("runs/simclr", data=..., out="e.npz")``."""
    from replearn.data import load_data
    from replearn.evaluate.features import extract_features
    from replearn.nn import load_encoder

    cfg = make_config(EmbedConfig, None, {**to_dict(config or EmbedConfig()), **overrides})
    out = Path(cfg.out)
    if out.suffix.lower() not in (".npz", ".parquet"):
        raise ReplearnError(f"unknown output format {out.suffix or out.name!r}", "end --out with .npz or .parquet")
    device = default_device()
    enc, spec = load_encoder(run, map_location=device)
    splits = ["train", "test"] if cfg.split == "all" else [cfg.split]
    parts, seen = [], None
    for split in splits:
        d = load_data(cfg.data, split, image_size=spec["image_size"], labels_csv=cfg.labels_csv)
        if seen is not None and d.ids == seen:
            break  # a folder has no split: its "test" is the same images as its "train"
        seen = d.ids
        if cfg.limit:
            d = d.subset(torch.arange(min(cfg.limit, len(d))))
        if d.channels != spec["channels"]:
            raise ReplearnError(f"the encoder expects {spec['channels']}-channel images, {cfg.data} has {d.channels}")
        d.mean, d.std = tuple(spec["mean"]), tuple(spec["std"])
        parts.append((extract_features(enc, d, cfg.batch_size, precision=cfg.precision).numpy(), d.ids, d.labels.numpy(), split))
    if len(parts) > 1:
        parts = [(e, [f"{s}/{i}" for i in ids], y, s) for e, ids, y, s in parts]
    emb = np.concatenate([p[0] for p in parts])
    ids = [i for p in parts for i in p[1]]
    labels = np.concatenate([p[2] for p in parts]).astype(np.int64)
    data = os.path.abspath(cfg.data) if os.path.exists(cfg.data) else cfg.data
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    meta = {"run": str(run_dir.resolve()), "data": data, "split": cfg.split,
            "image_size": spec["image_size"], "channels": spec["channels"], "precision": cfg.precision}
    _write(out, emb, ids, labels, meta)
    print(f"wrote {len(ids)} embeddings of dimension {emb.shape[1]} to {out}")
    return out
