"""VICReg: invariance between views, plus variance and covariance regularisation of each
(arXiv:2105.04906)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from replearn.losses.redundancy import vicreg_terms
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp


@METHODS.register("vicreg")
class VICReg(Method):
    """VICReg: backbone -> 3-layer MLP expander -> view MSE + per-dimension std hinge + decorrelation."""

    views = "simclr"
    n_views = 2
    paper = (
        "Bardes et al., VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning, "
        "ICLR 2022 (arXiv:2105.04906)"
    )

    @dataclass
    class Args:
        sim_w: float = 25.0  # weight of the invariance (MSE) term (paper: 25)
        var_w: float = 25.0  # weight of the variance hinge (paper: 25)
        cov_w: float = 1.0  # weight of the covariance term (paper: 1)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        # the paper's expander: Linear-BN-ReLU x2 -> Linear, 8192 wide; here the run's proj_hidden /
        # proj_dim (the zoo config uses 2048, for 256-d features)
        self.expander = mlp([backbone.out_dim, opts.proj_hidden, opts.proj_hidden, opts.proj_dim])

    def training_step(self, views, index):
        n = len(index)
        h = self.backbone(torch.cat(views))  # (2N, D)
        z = self.expander(h)  # (2N, P)
        # variance and covariance over the global batch (gathered with gradients)
        inv, var, cov = vicreg_terms(z[:n], z[n:])
        a = self.args
        loss = a.sim_w * inv + a.var_w * var + a.cov_w * cov
        terms = {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
        return loss, {"features": h[:n].detach(), **terms}
