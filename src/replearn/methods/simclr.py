"""SimCLR: two views of each image attract, all other views in the batch repel (arXiv:2002.05709)."""

from __future__ import annotations

import torch

from replearn.losses import nt_xent
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import projection_head


@METHODS.register("simclr")
class SimCLR(Method):
    """SimCLR: backbone -> MLP projection -> NT-Xent over 2N views, negatives from all processes."""

    views = "simclr"
    n_views = 2
    paper = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020 (arXiv:2002.05709)"

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.projector = projection_head(backbone.out_dim, opts.proj_hidden, opts.proj_dim)
        self.temperature = opts.temperature

    def training_step(self, views, index):
        x = torch.cat(views)  # (V*N, C, H, W): one backbone pass for all views (BN sees every view)
        h = self.backbone(x)  # (V*N, D)
        z = self.projector(h)  # (V*N, P)
        loss = nt_xent(z, index.repeat(len(views)), self.temperature)
        return loss, {"features": h.detach(), "embeddings": z.detach()}
