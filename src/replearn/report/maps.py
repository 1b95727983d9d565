"""The report's picture of an encoder: embeddings of a seeded sample of images, laid out in 2-D by
t-SNE, their thumbnails in one sprite sheet, and the cosine nearest neighbours of a few queries;
and the two sections that show them (``map_section``, ``neighbours_section``)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from replearn.data.imageset import ImageSet
from replearn.embed.index import neighbours, normalized
from replearn.errors import ReplearnError
from replearn.evaluate.features import extract_features
from replearn.evaluate.protocol import class_names
from replearn.report.page import esc, json_script, todo

MAX_TILE = 32  # thumbnails are the encoder's input size, at most this many pixels a side
MIN_TSNE = 6  # fewer points are laid out by their first two principal components
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
           "#9edae5", "#393b79"]
NO_LABEL = "#b0b7bd"


@dataclass
class MapSample:
    """The images on the map: ``ids``, ``labels`` (-1: none), class ``names``, the encoder's
    ``features`` (N, D), the 2-D ``xy`` (N, 2) in [0, 1], and the thumbnails as one PNG sprite sheet
    of ``cols`` columns of ``tile``-px squares (image i at row i // cols, column i % cols)."""

    ids: list[str]
    labels: np.ndarray
    names: list[str]
    features: np.ndarray
    xy: np.ndarray
    sprite_png: bytes
    cols: int
    tile: int
    total: int  # images in the data the sample was drawn from

    def __len__(self) -> int:
        return len(self.ids)

    def name_of(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else "no label"


def sample_index(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``min(k, n)`` distinct positions of ``range(n)``, a seeded draw, in increasing order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(k, n)].sort().values


def sprite_sheet(images: torch.Tensor) -> tuple[bytes, int, int]:
    """(PNG bytes, columns, tile side) of uint8 (N, C, H, W) images in a near-square grid, scaled
    down to ``MAX_TILE`` px when larger; a C other than 1 or 3 shows its first channel."""
    from PIL import Image

    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    tile = min(images.shape[-1], MAX_TILE)
    if images.shape[-1] != tile:
        images = torch.nn.functional.interpolate(images.float(), size=(tile, tile), mode="area").round().to(torch.uint8)
    n, c = len(images), images.shape[1]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = torch.zeros(c, rows * tile, cols * tile, dtype=torch.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        sheet[:, r * tile : (r + 1) * tile, q * tile : (q + 1) * tile] = im
    arr = sheet.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if c == 1 else arr, "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, "PNG", optimize=True)
    return buf.getvalue(), cols, tile


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) in [0, 1], aspect kept: t-SNE (seeded) of the L2-normalised features after PCA to at
    most 50 dimensions; under ``MIN_TSNE`` points, the first two principal components."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = normalized(features)
    n = len(x)
    if n < 2:
        return np.full((n, 2), 0.5)
    dims = min(50, x.shape[1], n)
    if x.shape[1] > dims:
        x = PCA(dims, random_state=seed).fit_transform(x)
    if n < MIN_TSNE:
        xy = np.zeros((n, 2))
        pcs = PCA(min(2, x.shape[1], n), random_state=seed).fit_transform(x)
        xy[:, : pcs.shape[1]] = pcs
    else:
        tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", learning_rate="auto", random_state=seed)
        xy = tsne.fit_transform(x)
    xy = xy - xy.min(0)
    return xy / (xy.max() or 1.0)


def nearest(features: np.ndarray, queries: list[int], k: int) -> np.ndarray:
    """(len(queries), k) positions of each query's k most cosine-similar other items, best first."""
    _, rows = neighbours(features, features[queries], k + 1)  # (Q, k + 1): itself among them
    return np.stack([r[r != q][:k] for r, q in zip(rows, queries, strict=True)])


def query_images(labels: np.ndarray, n: int = 6, seed: int = 0) -> list[int]:
    """``n`` seeded positions to show neighbours of, among the labelled items when any are."""
    pool = np.flatnonzero(labels >= 0)
    pool = pool if len(pool) else np.arange(len(labels))
    return sorted(np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False).tolist())


def _layout(n: int) -> str:
    """How ``tsne_2d`` lays out ``n`` points, in words."""
    return "t-SNE (after PCA to 50 dimensions, seed 0)" if n >= MIN_TSNE else "their first two principal components"


def map_sample(encoder: torch.nn.Module, spec: dict, data: ImageSet, points: int, batch_size: int,
               say: Callable[[str], None]) -> MapSample:
    """Embed a seeded sample of ``points`` images of ``data`` (loaded at the encoder's image size)
    with the encoder, normalised as its pretraining data was, and lay it out with t-SNE."""
    if data.channels != spec["channels"] or data.size != spec["image_size"]:
        raise ReplearnError(
            f"the encoder takes {spec['channels']}-channel {spec['image_size']}-px images, "
            f"{data.name} has {data.channels}-channel {data.size}-px ones",
            "give --data like the training data",
        )
    sub = data.subset(sample_index(len(data), points))
    sub.mean, sub.std = tuple(spec["mean"]), tuple(spec["std"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"embedding {len(sub)} of the {len(data)} images of {data.name} ...")
    feats = extract_features(encoder.to(device), sub, batch_size, precision="auto").numpy()
    say(f"laying out {len(sub)} points by {_layout(len(sub))} ...")
    xy = tsne_2d(feats)
    png, cols, tile = sprite_sheet(sub.batch(torch.arange(len(sub))))
    labels = sub.labels.numpy()
    names = class_names(data.classes, int(labels.max()) + 1 if len(labels) else 0)
    return MapSample(list(sub.ids), labels, names, feats, xy, png, cols, tile, len(data))


# -- the map's and the neighbours' sections ---------------------------------------------------------
def _colour(label: int) -> str:
    if label < 0:
        return NO_LABEL
    if label < len(PALETTE):
        return PALETTE[label]
    return f"hsl({(label * 137.5) % 360:.0f},60%,50%)"


def map_section(s: MapSample | None, note: str) -> str:
    if s is None:
        return todo(esc(note))
    size, pad = 640, 10
    circles = "".join(
        f'<circle data-id="{i}" data-label="{int(lab)}" cx="{pad + x * (size - 2 * pad):.1f}" '
        f'cy="{pad + y * (size - 2 * pad):.1f}" r="3.2" fill="{_colour(int(lab))}"/>'
        for i, ((x, y), lab) in enumerate(zip(s.xy, s.labels, strict=True))
    )
    counts = np.bincount(s.labels[s.labels >= 0], minlength=len(s.names)) if len(s.names) else []
    legend = "".join(f'<li data-label="{k}"><span class="swatch" style="background:{_colour(k)}"></span>'
                     f"{esc(name)} <span class=note>({int(counts[k])})</span></li>" for k, name in enumerate(s.names))
    if (s.labels < 0).any():
        legend += (f'<li data-label="-1"><span class="swatch" style="background:{NO_LABEL}"></span>'
                   f"no label <span class=note>({int((s.labels < 0).sum())})</span></li>")
    info = {"ids": s.ids, "names": s.names, "cols": s.cols, "tile": s.tile, "zoom": max(2, 96 // s.tile)}
    svg = (f'<svg id="map-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
           f'data-points="{len(s)}">{circles}</svg>')
    return (f'<p class="note">{len(s)} of the {s.total} images, embedded by the run\'s encoder and laid out by '
            f"{_layout(len(s))}. Point at a dot to see its image; point at a class "
            "to pick it out.</p>"
            f'<div class="row">{svg}<ul id="map-legend">{legend}</ul></div>'
            f'<div id="map-tip" hidden><div class="sprite"></div><div class="cap"></div></div>'
            + json_script("map-data", info))


def _thumb(s: MapSample, i: int, side: int) -> str:
    """A div showing image ``i`` of the sprite sheet at ``side`` px."""
    r, c = divmod(i, s.cols)
    return (f'<div class="sprite" style="width:{side}px;height:{side}px;background-size:{s.cols * side}px auto;'
            f'background-position:{-c * side}px {-r * side}px" title="{esc(s.ids[i])}"></div>')


def _figure(s: MapSample, i: int, mark: str, text: str) -> str:
    """A 64-px thumbnail of map image ``i`` with a caption; ``mark`` is its CSS class (or "")."""
    klass = f' class="{mark}"' if mark else ""
    return f"<figure{klass}>{_thumb(s, i, 64)}<figcaption>{text}</figcaption></figure>"


def neighbours_section(s: MapSample | None, note: str, k: int = 8) -> str:
    if s is None:
        return todo(esc(note))
    if len(s) < 2:
        return todo("the map has fewer than two images: no neighbours to show")
    queries = query_images(s.labels)
    near = nearest(s.features, queries, min(k, len(s) - 1))

    def caption(i: int) -> str:  # the label, or the file name where there is none
        return esc(s.name_of(int(s.labels[i])) if s.labels[i] >= 0 else Path(s.ids[i]).name)

    rows, hits, scored = [], 0, 0
    for q, nn in zip(queries, near, strict=True):
        cells = [_figure(s, q, "query", caption(q)), '<span class="arrow">&rarr;</span>']
        for j in map(int, nn):
            if s.labels[q] < 0 or s.labels[j] < 0:
                cells.append(_figure(s, j, "", caption(j)))
                continue
            right = bool(s.labels[j] == s.labels[q])
            hits, scored = hits + right, scored + 1
            cells.append(_figure(s, j, "right" if right else "wrong", ("&#10003; " if right else "&#10007; ") + caption(j)))
        rows.append(f'<div class="nn-row">{"".join(cells)}</div>')
    marks = f"; green: same label as the query, red: another. {hits} of {scored} share it." if scored else "."
    return (f'<p class="note">{len(queries)} query images (blue, seeded) and their {near.shape[1]} most '
            f"cosine-similar images among the map's {len(s)}{marks}</p>" + "".join(rows))
