"""Jigsaw: shuffle 3x3 tiles of an image by one of P fixed permutations and predict which (arXiv:1603.09246)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp
from replearn.views import pretext


def jigsaw_geometry(size: int, tile_scale: float, gap_frac: float) -> tuple[int, int, int]:
    """(side of the view to cut, cell, tile) for images of ``size`` px: ``tile_scale`` x size, or more
    where tiles would be smaller than the backbone's minimum (8x8 digits get a 27 px view)."""
    cell = max(1, round(tile_scale * size / pretext.GRID))
    while pretext.tile_size(pretext.GRID * cell, gap_frac)[1] < pretext.MIN_TILE:
        cell += 1
    return pretext.GRID * cell, *pretext.tile_size(pretext.GRID * cell, gap_frac)


@METHODS.register("jigsaw")
class Jigsaw(Method):
    """Jigsaw: a shared backbone embeds 9 shuffled tiles; an MLP says which of P permutations shuffled them.

    The MLP reads the tile features concatenated in tile-position order (the context-free network).
    Each image is augmented once at ``tile_scale`` x its size (28 px -> 42 px, so the 3x3 cells are
    14 px and the tiles 12 px: the paper's 64 px tiles in 75 px cells scaled down), each tile is
    taken at a random position inside its cell (the gap stops edge-continuity shortcuts), and the
    tiles are shuffled by a permutation drawn per image from a fixed maximal-Hamming-distance set.
    The permutation drawn in ``make_views`` (with the trainer's seeded generator) is kept for the
    ``training_step`` that follows. The paper's per-tile normalisation is left out.
    """

    views = "simclr-small"
    n_views = 9  # one view per tile position, tiles in shuffled order
    paper = (
        "Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles, "
        "ECCV 2016 (arXiv:1603.09246)"
    )

    @dataclass
    class Args:
        n_permutations: int = 100  # the paper's 1000 is for ImageNet; 100 suits 60k 28 px images
        tile_scale: float = 1.5  # the augmented view is cut at 1.5x the image size (28 -> 42 px)
        gap_frac: float = 0.15  # each tile is 85% of its cell, placed at random (64 of 75 px in the paper)
        permutation_seed: int = 0  # seed of the permutation set

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        self.register_buffer("permutations", pretext.permutation_set(a.n_permutations, a.permutation_seed))
        self.classifier = mlp([pretext.GRID**2 * backbone.out_dim, opts.proj_hidden, a.n_permutations])
        self._target: torch.Tensor | None = None

    def make_views(self, images, recipe, size, mean, std, generator):
        side, cell, tile = jigsaw_geometry(size, self.args.tile_scale, self.args.gap_frac)
        x = recipe(images, side, mean, std, generator)
        n = len(x)
        self._target = torch.randint(0, len(self.permutations), (n,), generator=generator, device=x.device)
        offsets = pretext.tile_offsets(n, cell, tile, generator, x.device)
        tiles = pretext.jigsaw(x, self.permutations.to(x.device)[self._target], tile, offsets)
        return list(tiles.unbind(1))  # 9 views of (N, C, tile, tile), in shuffled position order

    def training_step(self, views, index):
        n, target = len(views[0]), self._target
        if target is None or len(target) != n:
            raise RuntimeError("Jigsaw.training_step needs the views of Jigsaw.make_views")
        h = self.backbone(torch.cat(views))  # (9N, D), position-major
        h = h.view(len(views), n, -1)
        logits = self.classifier(h.transpose(0, 1).reshape(n, -1)).float()  # features in position order
        loss = F.cross_entropy(logits, target.to(logits.device))
        accuracy = (logits.argmax(1) == target.to(logits.device)).float().mean()
        self._target = None
        # the collapse alarm reads the mean tile features: no whole image passes the backbone here
        return loss, {"features": h.mean(0).detach(), "jigsaw_acc": accuracy.detach()}
