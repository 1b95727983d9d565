"""BYOL: the online network predicts an EMA target's projection of the other view (arXiv:2006.07733)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from replearn.losses.similarity import normalized_mse, symmetric
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp
from replearn.nn.momentum import cosine_momentum, ema_update_, frozen_copy


@METHODS.register("byol")
class BYOL(Method):
    """BYOL: an online net predicts the projection of the other view by its EMA target; no negatives.

    Online = backbone + projector + predictor, each head "a multi-layer perceptron (MLP) with a
    linear layer ... followed by batch normalization, rectified linear units (ReLU), and a final
    linear layer" (Linear-BN-ReLU-Linear); target = an EMA copy of backbone + projector, whose
    momentum rises from ``base_momentum`` to 1 on a cosine schedule. Loss: 2 - 2 cos(p, z_target),
    symmetrised over the two views (the mean of both terms; the paper sums them).
    """

    views = "simclr"
    n_views = 2
    paper = "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020 (arXiv:2006.07733)"

    @dataclass
    class Args:
        base_momentum: float = 0.99  # target EMA at the start; the paper's 0.996 is slow for ~2k steps

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        # sizes: the paper's 4096 -> 256 scaled to the run's proj_hidden -> proj_dim (512 -> 128)
        self.projector = mlp([backbone.out_dim, opts.proj_hidden, opts.proj_dim])
        self.predictor = mlp([opts.proj_dim, opts.proj_hidden, opts.proj_dim])
        self.target_backbone, self.target_projector = frozen_copy(self.backbone), frozen_copy(self.projector)

    def training_step(self, views, index):
        x = torch.cat(views)  # (2N, C, H, W): one pass per network for both views
        h = self.backbone(x)  # (2N, D)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)  # (N, P) each
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(x)).chunk(2)
        loss = symmetric(normalized_mse, p1, p2, z1, z2)
        return loss, {"features": h[: len(index)].detach(), "embeddings": p1.detach(), "target_momentum": self.momentum}

    @property
    def momentum(self) -> float:
        return cosine_momentum(self.args.base_momentum, self.progress)

    def after_step(self) -> None:
        ema_update_(self.target_backbone, self.backbone, self.momentum)
        ema_update_(self.target_projector, self.projector, self.momentum)
