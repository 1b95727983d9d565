"""SwAV: crops predict each other's online cluster codes, balanced by Sinkhorn-Knopp (arXiv:2006.09882)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch
import torch.nn.functional as F
from torch import nn

from replearn import dist
from replearn.losses.swav import sinkhorn, swapped_prediction_loss
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import projection_head
from replearn.nn.memory import Queue
from replearn.nn.prototypes import Prototypes
from replearn.views import multi_crop


@METHODS.register("swav")
class SwAV(Method):
    """SwAV: multi-crop views vs learnt prototypes; each crop predicts the large crops' Sinkhorn codes."""

    views = "simclr"
    n_views = 6  # 2 large + Args.n_small small crops
    paper = (
        "Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments, "
        "NeurIPS 2020 (arXiv:2006.09882)"
    )

    @dataclass
    class Args:
        n_prototypes: int = 100  # paper: 3000 for ImageNet's 1000 classes; 10 classes, 60k images here
        n_small: int = 4  # small crops (paper: 6 at 96 px beside 2 at 224 px)
        small_size: int = 0  # small crops' side; 0: 3/7 of the image size (96/224), 12 px for 28 px
        sinkhorn_eps: float = 0.05  # entropy regularisation of the codes (paper: 0.05)
        sinkhorn_iters: int = 3  # Sinkhorn-Knopp iterations (paper: 3)
        queue_size: int = 0  # earlier projections per large crop added to Sinkhorn (0: off; paper: 3840)
        queue_start_epoch: int = 2  # push from this epoch on, use once full (paper: epoch 15 of 200)
        freeze_prototypes_steps: int = 0  # zero gradient for the prototypes at first (paper: 1 epoch)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        self.n_views = 2 + a.n_small
        self.projector = projection_head(backbone.out_dim, opts.proj_hidden, opts.proj_dim)
        self.prototypes = Prototypes(opts.proj_dim, a.n_prototypes)
        self.temperature = opts.temperature
        queues = [Queue(a.queue_size, opts.proj_dim) for _ in range(2)] if a.queue_size else []
        self.queues = nn.ModuleList(queues)  # one per large crop, as the paper

    def make_views(self, images, recipe, size, mean, std, generator):
        small = self.args.small_size or None  # the first view is a large crop (its features are logged)
        return multi_crop(images, recipe, size, mean, std, generator, n_small=self.args.n_small, small_size=small)

    def training_step(self, views, index):
        n = len(index)
        # one backbone pass per crop size (BN statistics of one resolution at a time, as the paper)
        groups = groupby(views, key=lambda v: v.shape[-2:])
        h = torch.cat([self.backbone(torch.cat(list(g))) for _, g in groups])  # (V*N, D)
        z = F.normalize(self.projector(h).float(), dim=1)  # (V*N, P)
        frozen = self.step < self.args.freeze_prototypes_steps
        scores = self.prototypes(z, frozen=frozen).view(len(views), n, -1)  # (V, N, K), float32
        zs = z.detach().view(len(views), n, -1)
        codes = torch.stack([self._codes(scores[i].detach(), zs[i], i) for i in (0, 1)])  # large crops only
        loss = swapped_prediction_loss(scores, codes, self.temperature)
        return loss, {"features": h[:n].detach()}

    @torch.no_grad()
    def _codes(self, scores, z, crop):
        """Sinkhorn codes of large crop ``crop``'s batch, with the queue's earlier projections filling
        Sinkhorn when it is full (each process takes its own share of the shared queue, so all
        processes together hold each queued row once, as one process would)."""
        use_queue = bool(self.queues) and self.epoch >= self.args.queue_start_epoch
        rows = scores
        if use_queue and int(self.queues[crop].filled) >= len(self.queues[crop]):
            past = self.queues[crop].items[dist.rank() :: dist.world_size()]
            rows = torch.cat([self.prototypes(past), scores])
        q = sinkhorn(rows, self.args.sinkhorn_eps, self.args.sinkhorn_iters)[-len(scores) :]
        if use_queue:
            self.queues[crop].push(z)
        return q

    def after_step(self):
        self.prototypes.normalize_()
