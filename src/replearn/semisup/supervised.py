"""The baseline every semi-supervised method must beat: the labelled images alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn.semisup.base import SEMI, SemiBatch, SemiMethod


@SEMI.register("supervised")
class Supervised(SemiMethod):
    """Cross-entropy on weak views of the labelled images only; the unlabelled ones are ignored.

    The same classifier, views, EMA, optimiser and schedule as the semi-supervised methods, so a
    table row of it is the gain those methods owe to the unlabelled images."""

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        (logits_l,) = self.forward_all(b.weak(b.x_l))
        loss = F.cross_entropy(logits_l, b.y_l)
        return loss, {"loss_x": loss.detach()}
