"""Pretext-task transforms, batched and per sample on the batch's device: rotations (RotNet), 3x3
jigsaw tiles with per-tile jitter (Noroozi & Favaro, PIRL) and the fixed jigsaw permutation set."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

GRID = 3  # tiles per side: 3x3 = 9 tiles
MIN_TILE = 8  # the convnet backbone's three 2x max-pools need at least 8 px


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each square image x[i] (N, C, S, S) by k[i] * 90 degrees counter-clockwise, as
    ``torch.rot90(x[i], k[i], dims=(1, 2))``; one gather for the batch, k taken mod 4."""
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"rotate needs square images, got {h}x{w}")
    s = h
    i = torch.arange(s, device=x.device).view(1, s, 1)
    j = torch.arange(s, device=x.device).view(1, 1, s)
    k = (k.to(x.device).long() % 4).view(n, 1, 1)
    # out[i, j] reads in[row, col]: rot90 maps (i, j) <- (j, S-1-i), rot180 <- (S-1-i, S-1-j), rot270 <- (S-1-j, i)
    row = torch.where(k == 0, i, torch.where(k == 1, j, torch.where(k == 2, s - 1 - i, s - 1 - j)))
    col = torch.where(k == 0, j, torch.where(k == 1, s - 1 - i, torch.where(k == 2, s - 1 - j, i)))
    flat = (row * s + col).view(n, 1, s * s).expand(n, c, s * s)
    return x.reshape(n, c, s * s).gather(2, flat).view(n, c, s, s)


def tile_size(side: int, gap_frac: float) -> tuple[int, int]:
    """(cell, tile) for a ``side`` px image cut into 3x3 cells, each tile ``1 - gap_frac`` of its cell
    (the paper's 64 px tiles in 75 px cells leave a gap of ~15%)."""
    cell = side // GRID
    return cell, max(1, cell - round(gap_frac * cell))


def tile_offsets(n: int, cell: int, tile: int, g: torch.Generator, device) -> torch.Tensor:
    """Random position (dy, dx) of each tile inside its cell, (N, 9, 2) in [0, cell - tile]."""
    return torch.randint(0, cell - tile + 1, (n, GRID * GRID, 2), generator=g, device=device)


def jigsaw(
    x: torch.Tensor, order: torch.Tensor, tile: int, offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut (N, C, S, S) into a 3x3 grid of cells of S // 3 px, take a ``tile`` px tile in each cell at
    ``offsets`` (N, 9, 2) (default: centred) and shuffle: out[n, i] is the tile of cell order[n, i]
    (cells in row-major order). Returns (N, 9, C, tile, tile)."""
    n, c, side, _ = x.shape
    cell = side // GRID
    if not 0 < tile <= cell:
        raise ValueError(f"tile {tile} px does not fit a cell of {cell} px")
    cells = torch.arange(GRID * GRID, device=x.device)
    if offsets is None:
        offsets = torch.full((n, GRID * GRID, 2), (cell - tile) // 2, device=x.device)
    top = (cells // GRID) * cell + offsets[..., 0]  # (N, 9) of each source cell
    left = (cells % GRID) * cell + offsets[..., 1]
    order = order.to(x.device).long()
    top, left = top.gather(1, order), left.gather(1, order)  # (N, 9) in output order
    steps = torch.arange(tile, device=x.device)
    ys = (top[..., None] + steps)[..., :, None]  # (N, 9, t, 1)
    xs = (left[..., None] + steps)[..., None, :]  # (N, 9, 1, t)
    rows = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    return x.permute(0, 2, 3, 1)[rows, ys, xs].permute(0, 1, 4, 2, 3).contiguous()  # (N, 9, C, t, t)


def permutation_set(p: int, seed: int = 0) -> torch.Tensor:
    """P permutations of the 9 tiles (P, 9), chosen far apart in Hamming distance, deterministic.

    Greedy farthest-point selection over all 9! permutations: start from a random one, then add
    the permutation whose minimum Hamming distance to those chosen is largest, ties broken by the
    largest summed distance (Noroozi & Favaro's Algorithm 1 maximises the average alone), then by
    a seeded random order. The minimum distance this gives (7 for P = 30, 6 for P = 100) beats
    that of a random set (typically 2-3 for P = 100)."""
    return _permutation_set(p, seed).clone()


@functools.lru_cache(maxsize=1)
def _every_permutation(k: int) -> torch.Tensor:
    """All k! permutations of range(k), uint8 (k!, k), in lexicographic order."""
    flat = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(k))), np.uint8)
    return torch.from_numpy(flat.reshape(-1, k))


@functools.lru_cache(maxsize=4)
def _permutation_set(p: int, seed: int) -> torch.Tensor:
    k = GRID * GRID
    every = _every_permutation(k)
    if not 1 <= p <= len(every):
        raise ValueError(f"the number of permutations must be in 1..{len(every)}, not {p}")
    every = every[torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))]
    cols = every.T.contiguous()  # (9, 9!): compare one position of every candidate at a time
    chosen = [0]
    min_d = torch.full((len(every),), k + 1, dtype=torch.int32)
    sum_d = torch.zeros(len(every), dtype=torch.int32)
    for _ in range(p - 1):
        d = (cols != cols[:, chosen[-1], None]).sum(0, dtype=torch.int32)  # Hamming distance to the last
        torch.minimum(min_d, d, out=min_d)
        sum_d += d
        chosen.append(int(torch.argmax(min_d * (k * p + 1) + sum_d)))  # chosen ones have min_d 0
    return every[chosen].long()
