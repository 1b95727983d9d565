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

from replearn.data.imageset import ImageSet

FACTOR_NAMES = ["shape", "scale", "rotation", "pos_x", "pos_y"]
SHAPES = ["square", "ellipse", "heart"]
SCALES = np.linspace(0.5, 1.0, 6)
ROTATIONS = np.arange(10) * 9.0  # degrees
POSITIONS = 16
RADIUS = 0.25  # circumradius of a shape at scale 1, as a fraction of the side (half of it across)
TEST_SIZE, TEST_SEED = 5000, 20261128
SUPERSAMPLE = 4


def _position_range(size: int) -> tuple[float, float]:
    """Centres keep the largest shape, at any rotation, a pixel clear of the frame."""
    margin = RADIUS + 1.0 / size
    return margin, 1.0 - margin


def positions(size: int) -> np.ndarray:
    """The grid's 16 centres, as fractions of the side, on whole supersamples (1/128 px at 32 px:
    the grid renders by shifting each sprite)."""
    lo, hi = _position_range(size)
    return np.round(np.linspace(lo, hi, POSITIONS) * size * SUPERSAMPLE) / (size * SUPERSAMPLE)


def _inside(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the points (u, v) (unit circumradius coordinates, v down) lie in each shape."""
    square = (u.abs() <= math.sqrt(0.5)) & (v.abs() <= math.sqrt(0.5))
    ellipse = u.pow(2) + (v / 0.5).pow(2) <= 1
    # the heart (x^2 + y^2 - 1)^3 <= x^2 y^3 fits a circle of radius 1.25 about (0, 0.25): upright, within radius 1
    hx, hy = u * 1.27, -v * 1.27 + 0.25
    heart = (hx.pow(2) + hy.pow(2) - 1).pow(3) - hx.pow(2) * hy.pow(3) <= 0
    s = shape.view(-1, 1, 1)
    return torch.where(s == 0, square, torch.where(s == 1, ellipse, heart))


def _coverage(shape, scale, rotation, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(N, H, W) 0/1: whether the samples at offsets dx (N, 1, W) and dy (N, H, 1) from each centre
    (fractions of the side) fall inside each shape."""
    theta = torch.deg2rad(rotation).view(-1, 1, 1)
    r = (RADIUS * scale).view(-1, 1, 1)
    u = (torch.cos(theta) * dx + torch.sin(theta) * dy) / r  # rotated into the shape's frame
    v = (-torch.sin(theta) * dx + torch.cos(theta) * dy) / r
    return _inside(shape.long(), u, v).float()


def render(shape, scale, rotation, pos_x, pos_y, size: int = 32, chunk: int = 256) -> torch.Tensor:
    """uint8 (N, 1, size, size) images of the given factor values: shape index (N,), scale (N,),
    rotation in degrees (N,) and centre x, y as fractions of the side (N,); float tensors or arrays.
    Each pixel is the covered fraction of its 4 x 4 samples."""
    shape, scale, rotation, pos_x, pos_y = (torch.as_tensor(np.asarray(t), dtype=torch.float32) for t in (shape, scale, rotation, pos_x, pos_y))
    k = SUPERSAMPLE
    grid = (torch.arange(size * k, dtype=torch.float32) + 0.5) / (size * k)  # sample centres in [0, 1]
    out = []
    for start in range(0, len(shape), chunk):
        sl = slice(start, start + chunk)
        dx = grid.view(1, 1, -1) - pos_x[sl].view(-1, 1, 1)
        dy = grid.view(1, -1, 1) - pos_y[sl].view(-1, 1, 1)
        hit = _coverage(shape[sl], scale[sl], rotation[sl], dx, dy)
        cover = torch.nn.functional.avg_pool2d(hit.unsqueeze(1), k)  # fraction of each pixel covered
        out.append((cover * 255).round().to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 1, size, size, dtype=torch.uint8)


def factor_sizes() -> list[int]:
    return [len(SHAPES), len(SCALES), len(ROTATIONS), POSITIONS, POSITIONS]


def grid_factors() -> torch.Tensor:
    """int64 (46080, 5): row i holds np.unravel_index(i, factor_sizes())."""
    return torch.from_numpy(np.stack(np.unravel_index(np.arange(np.prod(factor_sizes())), factor_sizes()), 1).astype(np.int64))


def _nearest(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.abs(values[:, None] - grid[None, :]).argmin(1)


def render_grid(size: int = 32) -> torch.Tensor:
    """uint8 (46080, 1, size, size): the full factorial grid, the same images ``render`` draws for
    the grid's values, but each (shape, scale, rotation) sprite sampled once on a canvas twice the
    side and cut out at every position (positions are whole samples apart): a second, not minutes."""
    k, n = SUPERSAMPLE, size * SUPERSAMPLE
    f = grid_factors()
    combos = f[:, :3].unique(dim=0)  # (180, 3), in grid order
    offs = (torch.arange(-n, n, dtype=torch.float32) + 0.5) / n  # sample offsets from the centre
    canvas = _coverage(combos[:, 0].float(), torch.as_tensor(SCALES, dtype=torch.float32)[combos[:, 1]],
                       torch.as_tensor(ROTATIONS, dtype=torch.float32)[combos[:, 2]],
                       offs.view(1, 1, -1), offs.view(1, -1, 1))  # (180, 2n, 2n), centre between n-1 and n
    # a centre at whole sample P draws samples j = 0..n-1 from canvas row n - P + j; pooling k
    # samples per pixel then starts at phase (n - P) mod k: pool each phase once
    pos = torch.as_tensor(np.rint(positions(size) * n), dtype=torch.long)  # (16,) whole samples
    phases = {}
    for py in range(k):
        for px in range(k):
            phases[py, px] = torch.nn.functional.avg_pool2d(canvas[:, None, py:, px:], k)[:, 0]  # (180, h, w)
    sprite = f[:, 0] * len(SCALES) * len(ROTATIONS) + f[:, 1] * len(ROTATIONS) + f[:, 2]  # row of combos
    start_y, start_x = n - pos[f[:, 4]], n - pos[f[:, 3]]
    out = torch.empty(len(f), 1, size, size, dtype=torch.uint8)
    rows, cols = torch.arange(size).view(1, -1, 1), torch.arange(size).view(1, 1, -1)
    for (py, px), pooled in phases.items():
        sel = torch.nonzero(((start_y % k) == py) & ((start_x % k) == px)).flatten()
        if len(sel):
            y0, x0 = ((start_y[sel] - py) // k).view(-1, 1, 1), ((start_x[sel] - px) // k).view(-1, 1, 1)
            out[sel, 0] = (pooled[sprite[sel].view(-1, 1, 1), y0 + rows, x0 + cols] * 255).round().to(torch.uint8)
    return out


@functools.lru_cache(maxsize=4)
def _split(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, factors) of one split at ``size`` px, rendered once per process."""
    pos = positions(size)
    if split == "train":
        return render_grid(size), grid_factors()
    rng = np.random.default_rng(TEST_SEED)
    n = TEST_SIZE
    shape = rng.integers(0, len(SHAPES), n)
    scale = rng.uniform(SCALES[0], SCALES[-1], n)
    rot = rng.uniform(0.0, ROTATIONS[-1], n)
    px, py = rng.uniform(pos[0], pos[-1], n), rng.uniform(pos[0], pos[-1], n)
    f = np.stack([shape, _nearest(scale, SCALES), _nearest(rot, ROTATIONS), _nearest(px, pos), _nearest(py, pos)], 1)
    return render(shape, scale, rot, px, py, size=size), torch.from_numpy(f.astype(np.int64))


def shapes(split: str = "train", size: int = 32) -> ImageSet:
    """The ``shapes`` ImageSet of ``split`` ("train", "test" or "all") rendered at ``size`` px."""
    from replearn.data.sources import _stats

    parts = ["train", "test"] if split == "all" else [split]
    images, factors = zip(*(_split(p, size) for p in parts), strict=True)
    images, factors = torch.cat(images), torch.cat(factors)
    ids = [f"shapes/{p}/{i:06d}" for p in parts for i in range(len(_split(p, size)[0]))]
    mean, std = _stats(_split("train", size)[0])
    return ImageSet(
        ids=ids, labels=factors[:, 0].clone(), name="shapes", channels=1, size=size, images=images,
        classes=list(SHAPES), mean=mean, std=std, factors=factors, factor_names=list(FACTOR_NAMES),
        factor_sizes=factor_sizes(),
    )
