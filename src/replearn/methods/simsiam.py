"""SimSiam: one view's prediction matches the other's stop-gradient projection (arXiv:2011.10566)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from replearn.losses.similarity import negative_cosine, symmetric
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp


@METHODS.register("simsiam")
class SimSiam(Method):
    """SimSiam: each view's prediction matches the other view's stop-gradient projection; no negatives.

    Projector: "BN applied to each fully-connected layer, including its output fc. Its output fc has
    no ReLU" (3 layers; the output BN without affine parameters, as in the paper's code). Predictor:
    a bottleneck MLP, Linear-BN-ReLU-Linear with hidden = output / 4. Loss:
    D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative cosine similarity.
    """

    views = "simclr"
    n_views = 2
    paper = "Chen and He, Exploring Simple Siamese Representation Learning, CVPR 2021 (arXiv:2011.10566)"
    stop_gradient = True  # the whole trick; tests switch it off to see the collapse it prevents

    @dataclass
    class Args:
        pred_hidden: int = 0  # predictor bottleneck; 0: proj_dim // 4, the paper's 2048 -> 512 ratio

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        hidden, out = opts.proj_hidden, opts.proj_dim
        self.projector = mlp([backbone.out_dim, hidden, hidden, out], last_norm=True)
        self.projector[-1] = nn.BatchNorm1d(out, affine=False)
        self.predictor = mlp([out, self.args.pred_hidden or max(1, out // 4), out])

    def training_step(self, views, index):
        h = self.backbone(torch.cat(views))  # (2N, D): one pass for both views
        z = self.projector(h)  # (2N, P)
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = (z.detach() if self.stop_gradient else z).chunk(2)
        loss = symmetric(negative_cosine, p1, p2, z1, z2)
        return loss, {"features": h[: len(index)].detach(), "embeddings": p1.detach()}
