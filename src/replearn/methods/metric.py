"""Metric learning from class labels: backbone -> embedding head -> a pair, triplet, list or proxy loss.

Not a self-supervised method (it is not in ``METHODS``): ``replearn metric`` builds it with the
class labels of its data and feeds it class-balanced batches (P classes x K images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from replearn.errors import ReplearnError
from replearn.losses import arcface_loss, contrastive_margin_loss, nt_xent, ranked_list_loss, triplet_loss
from replearn.losses.metric import MINING
from replearn.methods.base import Method, MethodOptions, parse_args
from replearn.nn import projection_head

# name -> (paper, what the loss needs of a batch)
METRIC_LOSSES = {
    "contrastive": "Hadsell, Chopra, LeCun, Dimensionality Reduction by Learning an Invariant Mapping, CVPR 2006",
    "triplet": "Schroff et al., FaceNet, CVPR 2015 (arXiv:1503.03832); batch-hard: Hermans et al. (arXiv:1703.07737)",
    "supcon": "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020 (arXiv:2004.11362)",
    "ranked-list": "Wang et al., Ranked List Loss for Deep Metric Learning, CVPR 2019 (arXiv:1903.03238)",
    "arcface": "Deng et al., ArcFace: Additive Angular Margin Loss, CVPR 2019 (arXiv:1801.07698)",
    "cosface": "Wang et al., CosFace: Large Margin Cosine Loss, CVPR 2018 (arXiv:1801.09414)",
}
PAIR_LOSSES = ("contrastive", "triplet", "supcon", "ranked-list")  # need two images of a class in a batch


class MetricLearner(Method):
    """Metric learning: an MLP embedding of the backbone's features trained with a loss on class labels."""

    views = "simclr-small"
    n_views = 1

    @dataclass
    class Args:
        """Every loss's hyper-parameters; each loss reads its own (None: the loss's default)."""

        margin: float | None = None  # contrastive 0.5, triplet 0.2, ranked-list 0.4, arcface 0.5 rad, cosface 0.35
        mining: str = "semihard"  # triplet: all | hard | semihard
        temperature: float = 0.1  # supcon
        alpha: float = 1.2  # ranked-list: the negatives' boundary
        t_n: float = 10.0  # ranked-list: temperature of the negatives' weights
        lam: float = 1.0  # ranked-list: weight of the negatives' term
        scale: float = 30.0  # arcface / cosface: the logits' scale s

    @classmethod
    def check(cls, loss: str, given: dict) -> None:
        """A ReplearnError for an unknown loss, argument or mining rule (before any data is read)."""
        if loss not in METRIC_LOSSES:
            raise ReplearnError(f"unknown metric loss {loss!r}", f"choose one of {', '.join(METRIC_LOSSES)}")
        args = parse_args(cls.Args, given, loss)
        if args.mining not in MINING:
            raise ReplearnError(f"unknown triplet mining {args.mining!r}", "use mining=all, hard or semihard")

    def __init__(self, backbone: nn.Module, opts: MethodOptions, loss: str, n_classes: int):
        super().__init__(backbone, opts)
        self.check(loss, opts.args)
        self.loss, self.paper = loss, METRIC_LOSSES[loss]
        self.embed = projection_head(backbone.out_dim, opts.proj_hidden, opts.proj_dim)
        if loss in ("arcface", "cosface"):  # one learned direction (proxy) per class
            self.class_weight = nn.Parameter(torch.randn(n_classes, opts.proj_dim) * 0.01)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long))  # per dataset image

    def bind_data(self, data) -> None:
        """The class of every training image (ids in [0, n_classes)), looked up by dataset index."""
        self.labels = data.labels.long().clone()

    def training_step(self, views, index):
        """views: one float view (N, C, H, W); index: dataset ids (N,), whose labels the loss uses."""
        labels = self.labels[index.to(self.labels.device)]  # (N,)
        h = self.backbone(views[0])  # (N, D)
        z = self.embed(h)  # (N, P)
        a = self.args

        def m(default: float) -> float:
            return default if a.margin is None else a.margin

        if self.loss == "contrastive":
            loss = contrastive_margin_loss(z, labels, margin=m(0.5))
        elif self.loss == "triplet":
            loss = triplet_loss(z, labels, margin=m(0.2), mining=a.mining)
        elif self.loss == "supcon":  # SupCon is NT-Xent with class labels as the positives' ids
            loss = nt_xent(z, labels, a.temperature)
        elif self.loss == "ranked-list":
            loss = ranked_list_loss(z, labels, alpha=a.alpha, margin=m(0.4), t_n=a.t_n, lam=a.lam)
        else:
            loss = arcface_loss(z, self.class_weight, labels, scale=a.scale,
                                margin=m(0.5 if self.loss == "arcface" else 0.35), kind=self.loss)
        return loss, {"features": h.detach(), "embeddings": z.detach()}
