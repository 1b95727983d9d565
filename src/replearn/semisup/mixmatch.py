"""MixMatch: sharpened averaged guesses for unlabelled images, MixUp of labelled and unlabelled."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from replearn.losses.semisup import mse_consistency, sharpen, soft_cross_entropy
from replearn.schedules import linear_ramp
from replearn.semisup.base import SEMI, SemiBatch, SemiMethod
from replearn.views.mix import mix_weights, mixup


def guess_labels(method: SemiMethod, views: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The mean of the model's class probabilities over the K views of each unlabelled image,
    sharpened (no gradient): MixMatch's label guess."""
    with torch.no_grad():
        probs = torch.softmax(torch.stack(method.forward_all(*views)), dim=2)  # (K, N, C)
    return sharpen(probs.mean(0), temperature)


def mix_batch(x_l, t_l, x_u, t_u, alpha: float, g: torch.Generator):
    """MixUp of every labelled and unlabelled input with a random partner from both together, the
    weights lambda' >= 1/2 keeping each closer to itself (MixMatch, eqs. 8-13)."""
    x, t = torch.cat([x_l, x_u]), torch.cat([t_l, t_u])
    perm = torch.randperm(len(x), generator=g, device=g.device).to(x.device)
    lam = mix_weights(len(x), alpha, g, x.device)
    xm, tm = mixup(x, t, x[perm], t[perm], lam)
    return xm[: len(x_l)], tm[: len(x_l)], xm[len(x_l) :], tm[len(x_l) :]


@SEMI.register("mixmatch")
class MixMatch(SemiMethod):
    """Sharpened guesses for unlabelled images, MixUp of labelled and unlabelled ones.

    K weak views of each unlabelled image give a sharpened averaged guess; labelled and
    unlabelled inputs are MixUp'ed with partners drawn from both; cross-entropy on the mixed
    labelled part, squared error on the mixed unlabelled part, its weight ramped up linearly."""

    paper = (
        "Berthelot et al., MixMatch: A Holistic Approach to Semi-Supervised Learning, NeurIPS 2019 "
        "(arXiv:1905.02249)"
    )

    @dataclass
    class Args:
        k: int = 2  # weak views per unlabelled image for the guess
        temperature: float = 0.5  # sharpening
        alpha: float = 0.75  # Beta(alpha, alpha) of MixUp
        lambda_u: float = 75.0  # weight of the unlabelled loss after the ramp-up
        rampup: float = 0.4  # fraction of training the weight ramps up over (linearly)

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        x_l = b.weak(b.x_l)
        views = [b.weak(b.x_u) for _ in range(self.args.k)]
        q = guess_labels(self, views, self.args.temperature)
        t_l = F.one_hot(b.y_l, self.n_classes).float()
        xl, tl, xu, tu = mix_batch(x_l, t_l, torch.cat(views), q.repeat(self.args.k, 1), self.args.alpha, b.g)
        logits_l, logits_u = self.forward_all(xl, xu)
        loss_x = soft_cross_entropy(logits_l, tl)
        loss_u = mse_consistency(torch.softmax(logits_u, dim=1), tu)
        w = self.args.lambda_u * linear_ramp(self.progress, self.args.rampup)
        ones = torch.ones(len(q), device=q.device)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "pseudo": (q.argmax(1), ones)}
        return loss_x + w * loss_u, logs
