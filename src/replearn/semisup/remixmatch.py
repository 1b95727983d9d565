"""ReMixMatch: MixMatch with distribution alignment, augmentation anchoring, CTAugment, a rotation
loss and a pre-mixup unlabelled loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from replearn.losses.semisup import sharpen, soft_cross_entropy
from replearn.schedules import linear_ramp
from replearn.semisup.base import SEMI, DistributionAlignment, SemiBatch, SemiMethod, SemiOptions
from replearn.semisup.mixmatch import mix_batch
from replearn.views import ops, weak_view
from replearn.views.pretext import rotate


def rotation_batch(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by its own random quarter turns k in {0, 1, 2, 3} (counter-clockwise), and
    k as the label the rotation head predicts."""
    turns = torch.randint(0, 4, (len(x),), generator=g, device=g.device).to(x.device)
    return rotate(x, turns), turns


@SEMI.register("remixmatch")
class ReMixMatch(SemiMethod):
    """MixMatch whose guesses are aligned to the labelled class marginal and anchored on a weak view.

    Each unlabelled image's weak view gives the guess: the model's probabilities, aligned to the
    labelled class marginal (distribution alignment) and sharpened. That guess is the target of
    ``k`` strong CTAugment views of the image (augmentation anchoring). Labelled images get a strong
    view too; labelled and unlabelled inputs are MixUp'ed as in MixMatch, with cross-entropy on
    both mixed parts. Two more terms: the cross-entropy of the first strong view before MixUp, and
    the prediction of the rotation (0/90/180/270 degrees) of a rotated copy of it by a small head.
    CTAugment's magnitude weights learn from a probe batch of labelled images each step."""

    paper = (
        "Berthelot et al., ReMixMatch: Semi-Supervised Learning with Distribution Alignment and "
        "Augmentation Anchoring, ICLR 2020 (arXiv:1911.09785)"
    )

    @dataclass
    class Args:
        k: int = 8  # strong views per unlabelled image (the paper's 8; fewer for a CPU budget)
        temperature: float = 0.5  # sharpening of the guess
        alpha: float = 0.75  # Beta(alpha, alpha) of MixUp
        lambda_u: float = 1.5  # mixed unlabelled cross-entropy
        lambda_u1: float = 0.5  # the first strong view's cross-entropy before MixUp
        lambda_rot: float = 0.5  # rotation prediction
        rampup: float = 1 / 16  # fraction of training the unlabelled weights ramp up over (linearly)

    def __init__(self, backbone: nn.Module, opts: SemiOptions):
        super().__init__(backbone, opts)
        from replearn.views.strong import CTAugment

        self.cta = CTAugment()
        self.align = DistributionAlignment(opts.n_classes)
        self.rotation_head = nn.Linear(int(backbone.out_dim), 4)

    def bind_labels(self, labels: torch.Tensor, n_images: int) -> None:
        self.align.set_label_marginal(labels)

    def _strong(self, b: SemiBatch, x: torch.Tensor) -> torch.Tensor:
        return ops.normalize(self.cta(weak_view(x, b.mean, b.std, b.g, normalize=False), b.g), b.mean, b.std)

    @torch.no_grad()
    def _update_cta(self, b: SemiBatch) -> None:
        """CTAugment learns from how well the model classifies a probe view of the labelled batch."""
        probe, choices = self.cta.probe(b.x_l.float() / 255, b.g)
        probs = torch.softmax(self.predict(ops.normalize(probe, b.mean, b.std)).float(), dim=1)
        self.cta.update(choices, probs, b.y_l)

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        self._update_cta(b)
        n_u, k = len(b.x_u), self.args.k
        x_l = self._strong(b, b.x_l)
        strong = [self._strong(b, b.x_u) for _ in range(k)]
        with torch.no_grad():  # the guess: weak view, aligned, sharpened
            p = torch.softmax(self.forward_all(b.weak(b.x_u))[0], dim=1)
            q = sharpen(self.align(p), self.args.temperature)
        t_l = F.one_hot(b.y_l, self.n_classes).float()
        xl, tl, xu, tu = mix_batch(x_l, t_l, torch.cat(strong), q.repeat(k, 1), self.args.alpha, b.g)
        # the first strong view turned by k_i quarter turns per image; the head predicts k_i from its features
        x_rot, turns = rotation_batch(strong[0], b.g)
        feats = self.net.backbone(torch.cat([xl, xu, strong[0], x_rot]).contiguous(memory_format=torch.channels_last))
        logits = self.net.head(feats).float()
        logits_l, logits_u, logits_u1 = logits[: len(xl)], logits[len(xl) : len(xl) + len(xu)], logits[-2 * n_u : -n_u]
        loss_x = soft_cross_entropy(logits_l, tl)
        loss_u = soft_cross_entropy(logits_u, tu)
        loss_u1 = soft_cross_entropy(logits_u1, q)
        loss_rot = F.cross_entropy(self.rotation_head(feats[-n_u:]).float(), turns)
        ramp = linear_ramp(self.progress, self.args.rampup)
        loss = (loss_x + ramp * (self.args.lambda_u * loss_u + self.args.lambda_u1 * loss_u1)
                + self.args.lambda_rot * loss_rot)
        ones = torch.ones(n_u, device=q.device)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_u1": loss_u1.detach(),
                "loss_rot": loss_rot.detach(), "pseudo": (q.argmax(1), ones)}
        return loss, logs
