"""FixMatch: a confident prediction on the weak view is the label of the strong view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from replearn.losses.semisup import pseudo_label_loss
from replearn.semisup.base import SEMI, DistributionAlignment, SemiBatch, SemiMethod, SemiOptions


@SEMI.register("fixmatch")
class FixMatch(SemiMethod):
    """A confident prediction on an image's weak view becomes the label of its strong view.

    Cross-entropy on the weakly augmented labelled images, plus cross-entropy of each unlabelled
    image's strong view (RandAugment + Cutout) to the argmax of the model's prediction on its weak
    view, kept where that prediction reaches ``threshold``, averaged over the whole unlabelled
    batch. ``distribution_alignment=true`` first aligns the weak predictions to the labelled class
    marginal (ReMixMatch's fix for a model that starves some classes)."""

    paper = (
        "Sohn et al., FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence, "
        "NeurIPS 2020 (arXiv:2001.07685)"
    )

    @dataclass
    class Args:
        threshold: float = 0.95  # confidence a pseudo-label needs
        lambda_u: float = 1.0  # weight of the unlabelled loss
        n_ops: int = 2  # RandAugment ops per strong view
        distribution_alignment: bool = False

    def __init__(self, backbone, opts: SemiOptions):
        super().__init__(backbone, opts)
        self.align = DistributionAlignment(opts.n_classes) if self.args.distribution_alignment else None

    def bind_labels(self, labels: torch.Tensor) -> None:
        if self.align is not None:
            self.align.set_label_marginal(labels)

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        logits_l, logits_w, logits_s = self.forward_all(b.weak(b.x_l), b.weak(b.x_u), b.strong(b.x_u, self.args.n_ops))
        loss_x = F.cross_entropy(logits_l, b.y_l)
        p = torch.softmax(logits_w.detach(), dim=1)
        if self.align is not None:
            p = self.align(p)
        loss_u, mask = pseudo_label_loss(logits_s, p, self.args.threshold)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean(), "pseudo": (p.argmax(1), mask)}
        return loss_x + self.args.lambda_u * loss_u, logs
