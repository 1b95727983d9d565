"""FixMatch: a confident prediction on the weak view is the label of the strong view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from replearn.losses.semisup import (
    flexmatch_thresholds,
    graph_contrastive_loss,
    pseudo_label_graph,
    pseudo_label_loss,
)
from replearn.semisup.base import SEMI, DistributionAlignment, SemiBatch, SemiMethod, SemiOptions


@SEMI.register("fixmatch")
class FixMatch(SemiMethod):
    """A confident prediction on an image's weak view becomes the label of its strong view.

    Cross-entropy on the weakly augmented labelled images, plus cross-entropy of each unlabelled
    image's strong view (RandAugment + Cutout) to the argmax of the model's prediction on its weak
    view, kept where that prediction reaches ``threshold``, averaged over the whole unlabelled
    batch. ``distribution_alignment=true`` first aligns the weak predictions to the labelled class
    marginal (ReMixMatch's fix for a model that starves some classes); ``adaptive_threshold=true``
    lowers the threshold of the classes learned least so far (FlexMatch, arXiv:2110.08263).
    ``contrastive`` > 0 adds CoMatch's graph-contrastive term (arXiv:2011.11183) with that weight: a
    projection of each strong view is pulled to the projections of the weak views of the images its
    weak prediction probably shares a class with (``graph_threshold``), itself included, and pushed
    from the rest of the batch; the embedding learns from every unlabelled image, not only the
    confident ones. ``propagate_every`` = S > 0 makes the target the mean of the (aligned) weak
    prediction and the image's label-spreading scores, re-spread every S steps from the labels along
    the ``graph_k``-NN graph of the EMA model's features (after Iscen et al., CVPR 2019): a second,
    less self-confirming source of pseudo-labels."""

    paper = (
        "Sohn et al., FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence, "
        "NeurIPS 2020 (arXiv:2001.07685)"
    )

    @dataclass
    class Args:
        threshold: float = 0.95  # confidence a pseudo-label needs
        lambda_u: float = 1.0  # weight of the unlabelled loss
        n_ops: int = 2  # RandAugment ops per strong view
        cutout: float = 0.5  # Cutout's largest side, as a fraction of the image's (0: none)
        distribution_alignment: bool = False
        adaptive_threshold: bool = False  # FlexMatch's class-adaptive thresholds (curriculum pseudo-labelling)
        contrastive: float = 0.0  # weight of the graph-contrastive term (0: none)
        graph_threshold: float = 0.8  # W_ij = p_i . p_j below this is not a positive pair (> 1: the image only)
        temperature: float = 0.2  # of the graph-contrastive softmax
        proj_dim: int = 64  # width of the projection the graph-contrastive term compares
        propagate_every: int = 0  # steps between label-spreading refreshes of the targets (0: none)
        graph_k: int = 10  # neighbours of the label-spreading graph

    def __init__(self, backbone, opts: SemiOptions):
        super().__init__(backbone, opts)
        self.align = DistributionAlignment(opts.n_classes) if self.args.distribution_alignment else None
        self.graph_every, self.graph_k = self.args.propagate_every, self.args.graph_k
        if self.args.contrastive > 0:
            d = int(backbone.out_dim)
            self.proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, self.args.proj_dim))

    def bind_labels(self, labels: torch.Tensor, n_images: int) -> None:
        if self.align is not None:
            self.align.set_label_marginal(labels)
        if self.graph_every > 0:  # per image: its latest spread scores as probabilities (0: none yet)
            self.register_buffer("graph_p", torch.zeros(n_images, self.n_classes))
        if self.args.adaptive_threshold:  # per image: the class its latest confident prediction named
            self.register_buffer("learned", torch.full((n_images,), -1, dtype=torch.long))

    def set_graph_scores(self, scores: torch.Tensor) -> None:
        """Rows normalised to probabilities; a row the labels never reached becomes uniform."""
        total = scores.sum(1, keepdim=True)
        p = torch.where(total > 0, scores / total.clamp_min(1e-30), torch.full_like(scores, 1.0 / scores.shape[1]))
        self.graph_p.copy_(p.to(self.graph_p.device))

    def _threshold(self, p: torch.Tensor, u_index: torch.Tensor | None) -> float | torch.Tensor:
        """The fixed threshold, or per row FlexMatch's threshold of the row's predicted class, from
        the images learned before this batch; then records this batch's confident predictions."""
        if not self.args.adaptive_threshold:
            return self.args.threshold
        if u_index is None or not hasattr(self, "learned"):
            raise RuntimeError("adaptive_threshold needs bind_labels() and the unlabelled indices")
        conf, pred = p.max(dim=1)
        per_class = flexmatch_thresholds(self.learned, self.n_classes, self.args.threshold).to(p.device)
        sure = conf > self.args.threshold
        self.learned[u_index[sure].to(self.learned.device)] = pred[sure].to(self.learned.device)
        return per_class[pred]

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        views = (b.weak(b.x_l), b.weak(b.x_u), b.strong(b.x_u, self.args.n_ops, self.args.cutout))
        if self.args.contrastive > 0:
            (logits_l, logits_w, logits_s), (_, f_w, f_s) = self.forward_all(*views, features=True)
        else:
            logits_l, logits_w, logits_s = self.forward_all(*views)
        loss_x = F.cross_entropy(logits_l, b.y_l)
        p = torch.softmax(logits_w.detach(), dim=1)
        if self.align is not None:
            p = self.align(p)
        if self.graph_every > 0 and b.u_index is not None and bool(self.graph_p[0].sum() > 0):  # set: rows sum to 1
            p = (p + self.graph_p[b.u_index.to(self.graph_p.device)].to(p.device)) / 2
        loss_u, mask = pseudo_label_loss(logits_s, p, self._threshold(p, b.u_index))
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean(), "pseudo": (p.argmax(1), mask)}
        loss = loss_x + self.args.lambda_u * loss_u
        if self.args.contrastive > 0:
            target = pseudo_label_graph(p, self.args.graph_threshold)
            loss_c = graph_contrastive_loss(self.proj(f_s), self.proj(f_w).detach(), target, self.args.temperature)
            logs["loss_c"] = loss_c.detach()
            loss = loss + self.args.contrastive * loss_c
        return loss, logs
