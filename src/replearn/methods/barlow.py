"""Barlow Twins: the cross-correlation of two views' projections is driven to the identity
(arXiv:2103.03230)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from replearn.losses.redundancy import barlow_twins_loss
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp


@METHODS.register("barlow")
class BarlowTwins(Method):
    """Barlow Twins: backbone -> 3-layer MLP projector -> cross-correlation of the two views pushed to I."""

    views = "simclr"
    n_views = 2
    paper = "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021 (arXiv:2103.03230)"

    @dataclass
    class Args:
        lambd: float = 5.1e-3  # weight of the off-diagonal (redundancy) term; the paper's value for D=8192

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        # "a projector network that has three linear layers, each with 8192 output units; the first
        # two are followed by a batch normalization layer and rectified linear units"; the width is
        # the run's proj_hidden / proj_dim (the zoo config uses 2048: 8192 is sized for ResNet-50's
        # 2048-d features, ours are 256-d)
        self.projector = mlp([backbone.out_dim, opts.proj_hidden, opts.proj_hidden, opts.proj_dim])

    def training_step(self, views, index):
        n = len(index)
        h = self.backbone(torch.cat(views))  # (2N, D): one pass, BN sees both views
        z = self.projector(h)  # (2N, P)
        # the loss standardises z1 and z2 over the global batch (gathered with gradients)
        loss = barlow_twins_loss(z[:n], z[n:], self.args.lambd)
        return loss, {"features": h[:n].detach()}
