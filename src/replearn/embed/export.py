"""Export embeddings with ids and labels, as .npz or .parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from replearn.config import EmbedConfig, make_config, to_dict
from replearn.errors import ReplearnError


def _write(path: Path, emb: np.ndarray, ids: list[str], labels: np.ndarray) -> None:
    from replearn.fileio import atomic_write_bytes

    suffix = path.suffix.lower()
    if suffix == ".npz":
        import io

        buf = io.BytesIO()
        np.savez(buf, embeddings=emb, ids=np.asarray(ids, dtype=str), labels=labels)
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
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(sink.getvalue().to_pybytes(), path)
    else:
        raise ReplearnError(f"unknown output format {suffix or path.name!r}", "end --out with .npz or .parquet")


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(embeddings float32 (N, D), ids, labels int64 with -1 where unknown) from .npz or .parquet."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        with np.load(path) as z:
            return z["embeddings"], z["ids"].tolist(), z["labels"]
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    emb = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    return emb.reshape(t.num_rows, -1), t.column("id").to_pylist(), t.column("label").to_numpy()


def embed(run: str, config: EmbedConfig | None = None, **overrides) -> Path:
    """Embed a data source with a run's encoder: ``replearn.embed("runs/simclr", data=..., out="e.npz")``."""
    from replearn.data import load_data
    from replearn.evaluate.features import extract_features
    from replearn.nn import load_encoder

    cfg = make_config(EmbedConfig, None, {**to_dict(config or EmbedConfig()), **overrides})
    out = Path(cfg.out)
    if out.suffix.lower() not in (".npz", ".parquet"):
        raise ReplearnError(f"unknown output format {out.suffix or out.name!r}", "end --out with .npz or .parquet")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        parts.append((extract_features(enc, d, cfg.batch_size).numpy(), d.ids, d.labels.numpy(), split))
    if len(parts) > 1:
        parts = [(e, [f"{s}/{i}" for i in ids], y, s) for e, ids, y, s in parts]
    emb = np.concatenate([p[0] for p in parts])
    ids = [i for p in parts for i in p[1]]
    labels = np.concatenate([p[2] for p in parts]).astype(np.int64)
    _write(out, emb, ids, labels)
    print(f"wrote {len(ids)} embeddings of dimension {emb.shape[1]} to {out}")
    return out
