"""Pseudo-Label: train on the model's own confident predictions for unlabelled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from replearn.losses.semisup import pseudo_label_loss
from replearn.schedules import sigmoid_ramp
from replearn.semisup.base import SEMI, SemiBatch, SemiMethod


@SEMI.register("pseudolabel")
class PseudoLabel(SemiMethod):
    """The model's own confident predictions become labels for the unlabelled images.

    Cross-entropy on the labels, plus cross-entropy of each unlabelled image's weak view to the
    argmax of the model's own prediction for it, kept where that prediction is confident (the
    modern form; ``threshold=0`` keeps every one, as the paper does). The unlabelled weight ramps
    up over the first ``rampup`` of training, as the paper's alpha(t) does."""

    paper = "Lee, Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method, ICML workshop 2013"

    @dataclass
    class Args:
        threshold: float = 0.95  # keep a pseudo-label when its probability reaches this
        lambda_u: float = 1.0  # weight of the unlabelled loss after the ramp-up (the paper: 3)
        rampup: float = 0.4  # fraction of training the weight ramps up over

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        logits_l, logits_u = self.forward_all(b.weak(b.x_l), b.weak(b.x_u))
        loss_x = F.cross_entropy(logits_l, b.y_l)
        p = torch.softmax(logits_u.detach(), dim=1)
        loss_u, mask = pseudo_label_loss(logits_u, p, self.args.threshold)
        w = self.args.lambda_u * sigmoid_ramp(self.progress, self.args.rampup)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask": mask.mean(), "pseudo": (p.argmax(1), mask)}
        return loss_x + w * loss_u, logs
