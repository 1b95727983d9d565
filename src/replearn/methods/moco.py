"""MoCo v2: queries match their momentum-encoder keys against a queue of older keys (arXiv:2003.04297)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from replearn.losses.infonce import infonce_queue
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp
from replearn.nn.memory import Queue
from replearn.nn.momentum import ema_update_, frozen_copy


@METHODS.register("moco")
class MoCo(Method):
    """MoCo v2: InfoNCE of each query against its EMA key encoder's key and a queue of past keys.

    Query encoder = backbone + MoCo v2's MLP head ("a 2-layer MLP head (hidden layer 2048-d, with
    ReLU)", no BN); key encoder = an EMA copy of both. The loss is symmetrised over the two views
    (each view's query against the other view's key, as in MoCo v3), and the keys of both views
    are pushed into the queue after the loss is formed. The queue starts with random unit vectors,
    as in the paper's code. No shuffle-BN: batch norm is per process, over the batch of 2N views.
    The paper shuffles the key encoder's batch across GPUs because a query and its key share batch
    statistics that the queued negatives lack, a signal the model can exploit; for short runs on
    one device that risk is accepted (splitting the key batch into shuffled BN groups would remove it).
    """

    views = "simclr"
    n_views = 2
    paper = "Chen et al., Improved Baselines with Momentum Contrastive Learning, arXiv 2020 (arXiv:2003.04297)"

    @dataclass
    class Args:
        queue_size: int = 8192  # negatives; the paper's 65536 is ~5% of ImageNet, 8192 ~14% of 60k images
        momentum: float = 0.99  # key encoder EMA; the paper's 0.999 moves too slowly for ~2k steps

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.projector = mlp([backbone.out_dim, opts.proj_hidden, opts.proj_dim], norm_layer=None)
        self.key_backbone, self.key_projector = frozen_copy(self.backbone), frozen_copy(self.projector)
        self.queue = Queue(self.args.queue_size, opts.proj_dim)
        self.temperature = opts.temperature

    def training_step(self, views, index):
        x = torch.cat(views)  # (2N, C, H, W): one pass per encoder for both views
        h = self.backbone(x)  # (2N, D)
        q1, q2 = self.projector(h).chunk(2)  # (N, P) each
        with torch.no_grad():
            k1, k2 = self.key_projector(self.key_backbone(x)).chunk(2)
        negatives = self.queue.items.clone()  # (K, P); a copy, since push below writes in place
        t = self.temperature
        loss = (infonce_queue(q1, k2, negatives, t) + infonce_queue(q2, k1, negatives, t)) / 2
        for k in (k1, k2):  # one push per view keeps the queue's order equal for W x N and 1 x W*N
            self.queue.push(torch.nn.functional.normalize(k.float(), dim=1))
        return loss, {"features": h[: len(index)].detach(), "embeddings": q1.detach()}

    def after_step(self) -> None:
        ema_update_(self.key_backbone, self.backbone, self.args.momentum)
        ema_update_(self.key_projector, self.projector, self.args.momentum)
