"""``shapes``: a synthetic image set with known generating factors (like dSprites), rendered in torch.

Factors, in order: shape (square, ellipse, heart), scale (6 values in [0.5, 1]), rotation (10 values,
0-81 degrees: within [0, 90) no two values draw the same square, and no two the same ellipse),
x and y position (16 values each). The ``train`` split is the full factorial grid, 3 x 6 x 10 x 16
x 16 = 46,080 images, in row-major factor order; ``test`` is 5,000 images with factor values drawn
uniformly from the same ranges (off the grid, so not copies of training images), whose ``factors``
are the nearest grid values; ``all`` is both. White shapes on black, anti-aliased by 4x4
supersampling; the label is the shape.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from replearn.data.imageset import ImageSet

FACTOR_NAMES = ["shape", "scale", "rotation", "pos_x", "pos_y"]
SHAPES = ["square", "ellipse", "heart"]
SCALES = np.linspace(0.5, 1.0, 6)
ROTATIONS = np.arange(10) * 9.0  # degrees
POSITIONS = 16
RADIUS = 0.25  # circumradius of a shape at scale 1, as a fraction of the side (half of it across)
TEST_SIZE, TEST_SEED = 5000, 20261128
SUPERSAMPLE = 4


def factor_sizes() -> list[int]:
    """Number of values of each factor, in FACTOR_NAMES order: [3, 6, 10, 16, 16]."""
    return [len(SHAPES), len(SCALES), len(ROTATIONS), POSITIONS, POSITIONS]


def grid_factors() -> torch.Tensor:
    """int64 (46080, 5): row i holds np.unravel_index(i, factor_sizes())."""
    sizes = factor_sizes()
    return torch.from_numpy(np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), 1).astype(np.int64))


def _position_samples(size: int) -> np.ndarray:
    """The grid's 16 centres in whole supersamples; they keep the largest shape, at any rotation,
    a pixel clear of the frame."""
    n = size * SUPERSAMPLE
    margin = RADIUS + 1.0 / size
    return np.rint(np.linspace(margin, 1.0 - margin, POSITIONS) * n).astype(np.int64)


def positions(size: int) -> np.ndarray:
    """The grid's 16 centres as fractions of the side (whole supersamples: 1/128 of the side at 32 px)."""
    return _position_samples(size) / (size * SUPERSAMPLE)


# Each maps points (u, v) in a shape's own frame (unit circumradius, v pointing down) to inside or not.
def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= math.sqrt(0.5)


def _ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + 4 * v * v <= 1  # axes 2 : 1


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # (x^2 + y^2 - 1)^3 <= x^2 y^3 lies within 1.25 of (0, 0.25): scaled by 1.27 it fits the unit circle, tip down
    x, y = u * 1.27, 0.25 - v * 1.27
    xx = x * x
    t = xx + y * y - 1
    return t * t * t <= xx * y * y * y


_INSIDE = (_square, _ellipse, _heart)


def _offsets(m: torch.Tensor, frac: torch.Tensor, n: int) -> torch.Tensor:
    """Offsets, as fractions of the side, of the samples m (whole samples after the one the centre lies
    in) from a centre frac of a sample into its own. The grid and ``render`` both go through here, so
    the same sample gets the same float and both draw the same pixels."""
    return (m.float() + 0.5 - frac) / n


def _coverage(shape, scale, rotation, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """bool (N, H, W): whether the samples at offsets dx (N or 1, 1, W) and dy (N or 1, H, 1) from each
    centre fall inside each image's shape; each image is tested against its own shape only."""
    theta = torch.deg2rad(rotation.double())
    # in float64, then rounded: the grid's 180 angles and render's batches then get the very same floats
    cos, sin = torch.cos(theta).float().view(-1, 1, 1), torch.sin(theta).float().view(-1, 1, 1)
    r = (RADIUS * scale).view(-1, 1, 1)
    out = torch.zeros(len(shape), dy.shape[1], dx.shape[2], dtype=torch.bool)
    for s, inside in enumerate(_INSIDE):
        rows = torch.nonzero(shape == s).flatten()
        if len(rows):
            x = dx[rows] if dx.shape[0] > 1 else dx
            y = dy[rows] if dy.shape[0] > 1 else dy
            c, si, rr = cos[rows], sin[rows], r[rows]
            out[rows] = inside((c * x + si * y) / rr, (c * y - si * x) / rr)  # rotated into the shape's frame
    return out


def _pool(hit: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H / k, W / k): the covered fraction of each pixel's k x k samples, times 255."""
    return (F.avg_pool2d(hit.float().unsqueeze(1), SUPERSAMPLE)[:, 0] * 255).round().to(torch.uint8)


def _place(windows: torch.Tensor, which: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, size: int,
           chunk: int = 2048) -> torch.Tensor:
    """uint8 (N, 1, size, size): black frames, each showing ``windows[which[i]]`` (M, w, w) with its top
    left pixel at (x0[i], y0[i]) (any integers: what falls outside the frame is cut off)."""
    w = windows.shape[-1] + 2
    flat = F.pad(windows, (1, 1, 1, 1)).reshape(-1)  # the zero border is what pixels off the window read
    pixel = torch.arange(size)
    out = torch.empty(len(which), 1, size, size, dtype=torch.uint8)
    for start in range(0, len(which), chunk):
        sl = slice(start, start + chunk)
        ry = (pixel.view(1, -1) - y0[sl].view(-1, 1) + 1).clamp_(0, w - 1)  # (B, size) row in the padded window
        rx = (pixel.view(1, -1) - x0[sl].view(-1, 1) + 1).clamp_(0, w - 1)
        idx = (which[sl] * w * w).view(-1, 1, 1) + (ry * w).unsqueeze(2) + rx.unsqueeze(1)  # (B, size, size)
        out[sl, 0] = flat[idx]
    return out


def render(shape, scale, rotation, pos_x, pos_y, size: int = 32, chunk: int = 512) -> torch.Tensor:
    """uint8 (N, 1, size, size) images of the given factor values: shape index (N,), scale (N,),
    rotation in degrees, clockwise on screen (N,), and centre x, y as fractions of the side from the
    top left (N,); tensors or arrays. Parts of a shape outside the frame are cut off.
    Each pixel is the covered fraction of its 4 x 4 samples. Only a window around each shape is
    sampled, in batches of ``chunk`` images."""
    shape, scale, rotation = (torch.as_tensor(np.asarray(t), dtype=torch.float32).flatten()
                              for t in (shape, scale, rotation))
    pos_x, pos_y = (torch.as_tensor(np.asarray(t), dtype=torch.float64).flatten() for t in (pos_x, pos_y))
    k, n = SUPERSAMPLE, size * SUPERSAMPLE
    out = []
    for start in range(0, len(shape), chunk):
        sl = slice(start, start + chunk)
        half = math.ceil(RADIUS * max(float(scale[sl].abs().max()), 0.0) * size)  # pixels the shape reaches
        j = torch.arange((2 * half + 1) * k)  # window samples
        cx, cy = pos_x[sl] * n, pos_y[sl] * n  # centres in samples
        px, py = cx.floor(), cy.floor()
        x0 = torch.div(px.long(), k, rounding_mode="floor") - half  # the window's first pixel
        y0 = torch.div(py.long(), k, rounding_mode="floor") - half
        dx = _offsets((x0 * k - px.long()).view(-1, 1, 1) + j.view(1, 1, -1), (cx - px).float().view(-1, 1, 1), n)
        dy = _offsets((y0 * k - py.long()).view(-1, 1, 1) + j.view(1, -1, 1), (cy - py).float().view(-1, 1, 1), n)
        windows = _pool(_coverage(shape[sl], scale[sl], rotation[sl], dx, dy))
        out.append(_place(windows, torch.arange(len(windows)), x0, y0, size))
    return torch.cat(out) if out else torch.zeros(0, 1, size, size, dtype=torch.uint8)


def render_grid(size: int = 32) -> torch.Tensor:
    """uint8 (46080, 1, size, size): the full factorial grid, pixel for pixel what ``render`` draws for
    the grid's values, but each of the 180 (shape, scale, rotation) sprites is sampled once and
    pooled at each of the 4 x 4 sub-pixel phases a centre on whole samples can have; every image is
    then one of these 2,880 windows placed in a black frame."""
    k, n = SUPERSAMPLE, size * SUPERSAMPLE
    f = grid_factors()
    combos = f[:, :3].unique(dim=0)  # (180, 3), row = the sprite's index in grid order
    reach = math.ceil((RADIUS * SCALES[-1] * n + k) / k) * k  # samples, whole pixels: covers every phase
    m = torch.arange(-reach, reach + k)  # samples relative to the centre's
    zero = torch.zeros(len(combos), 1, 1)
    canvas = _coverage(combos[:, 0].float(), torch.as_tensor(SCALES, dtype=torch.float32)[combos[:, 1]],
                       torch.as_tensor(ROTATIONS, dtype=torch.float32)[combos[:, 2]],
                       _offsets(m.view(1, 1, -1), zero, n), _offsets(m.view(1, -1, 1), zero, n))
    # phase p: pixels start at samples -reach + p + q k, q = 0 .. w-1 (the canvas holds all of them)
    w = 2 * reach // k
    windows = torch.stack([torch.stack([_pool(canvas[:, py:, px:])[:, :w, :w] for px in range(k)], 1)
                           for py in range(k)], 1)  # (180, k, k, w, w)
    # a centre at sample P starts its pixels at phase (-P) mod k, window pixel 0 at frame pixel (P + p - reach) / k
    cx, cy = (torch.from_numpy(_position_samples(size))[f[:, j]] for j in (3, 4))
    phx, phy = (-cx) % k, (-cy) % k
    sprite = (f[:, 0] * len(SCALES) + f[:, 1]) * len(ROTATIONS) + f[:, 2]
    return _place(windows.reshape(-1, w, w), (sprite * k + phy) * k + phx,
                  torch.div(cx + phx - reach, k, rounding_mode="floor"),
                  torch.div(cy + phy - reach, k, rounding_mode="floor"), size)


def _nearest(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.abs(values[:, None] - grid[None, :]).argmin(1)


@functools.lru_cache(maxsize=4)
def _split(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, factors) of the train or test split at ``size`` px, rendered once per process."""
    if split == "train":
        return render_grid(size), grid_factors()
    pos = positions(size)
    rng = np.random.default_rng(TEST_SEED)
    n = TEST_SIZE
    shape = rng.integers(0, len(SHAPES), n)
    scale = rng.uniform(SCALES[0], SCALES[-1], n)
    rot = rng.uniform(0.0, ROTATIONS[-1], n)
    px, py = rng.uniform(pos[0], pos[-1], n), rng.uniform(pos[0], pos[-1], n)
    f = np.stack([shape, _nearest(scale, SCALES), _nearest(rot, ROTATIONS), _nearest(px, pos), _nearest(py, pos)],
                 1)
    return render(shape, scale, rot, px, py, size=size), torch.from_numpy(f.astype(np.int64))


@functools.lru_cache(maxsize=2)
def _train_stats(size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from replearn.data.sources import _stats

    return _stats(_split("train", size)[0])


def shapes(split: str = "train", size: int = 32) -> ImageSet:
    """The ``shapes`` ImageSet of ``split`` ("train", "test" or "all": train then test) at ``size`` px,
    with ``factors``, labels = the shape, and the training grid's mean and std; ids are
    ``shapes/<split>/<index>``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split: {split!r}")
    parts = ["train", "test"] if split == "all" else [split]
    images, factors = zip(*(_split(p, size) for p in parts), strict=True)
    images, factors = torch.cat(images), torch.cat(factors)  # a copy: the cache stays untouched
    ids = [f"shapes/{p}/{i:06d}" for p in parts for i in range(len(_split(p, size)[0]))]
    mean, std = _train_stats(size)
    return ImageSet(
        ids=ids, labels=factors[:, 0].clone(), name="shapes", channels=1, size=size, images=images,
        classes=list(SHAPES), mean=mean, std=std, factors=factors, factor_names=list(FACTOR_NAMES),
        factor_sizes=factor_sizes(),
    )
