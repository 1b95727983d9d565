"""Mean Teacher: consistency of the student's predictions to those of its EMA, the teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from replearn.errors import ReplearnError
from replearn.losses.semisup import mse_consistency
from replearn.schedules import sigmoid_ramp
from replearn.semisup.base import SEMI, SemiBatch, SemiMethod


@SEMI.register("meanteacher")
class MeanTeacher(SemiMethod):
    """The student's predictions are pulled towards those of its EMA, the teacher.

    Cross-entropy on the labels, plus the squared distance between the student's class
    probabilities on one weak view of each unlabelled image and the teacher's on another. The
    teacher is the EMA model every method keeps (``--ema``), run in eval mode without gradient; the
    consistency weight ramps up with the sigmoid schedule over the first ``rampup`` of training.
    ``student_view=strong`` gives the student FixMatch's strong view (RandAugment + Cutout) instead
    of a second weak one: more noise between student and teacher, the lever the paper's own
    ablations point to (its input noise and dropout)."""

    paper = (
        "Tarvainen & Valpola, Mean teachers are better role models: weight-averaged consistency targets "
        "improve semi-supervised deep learning results, NeurIPS 2017 (arXiv:1703.01780)"
    )

    @dataclass
    class Args:
        lambda_u: float = 50.0  # consistency weight after the ramp-up (MSE over class probabilities)
        rampup: float = 0.4  # fraction of training the weight ramps up over
        student_view: str = "weak"  # the student's view of the unlabelled images: weak or strong

    def __init__(self, backbone, opts):
        super().__init__(backbone, opts)
        if self.args.student_view not in ("weak", "strong"):
            raise ReplearnError(f"meanteacher's student_view is {self.args.student_view!r}",
                                "write --method-args student_view=weak or student_view=strong")

    def training_step(self, b: SemiBatch) -> tuple[torch.Tensor, dict]:
        u_teacher = b.weak(b.x_u)
        u_student = b.strong(b.x_u) if self.args.student_view == "strong" else b.weak(b.x_u)
        logits_l, logits_u = self.forward_all(b.weak(b.x_l), u_student)
        with torch.no_grad():
            target = torch.softmax(self.predict(u_teacher.contiguous(memory_format=torch.channels_last)).float(), 1)
        loss_x = F.cross_entropy(logits_l, b.y_l)
        loss_u = mse_consistency(torch.softmax(logits_u, dim=1), target)
        w = self.args.lambda_u * sigmoid_ramp(self.progress, self.args.rampup)
        ones = torch.ones(len(target), device=target.device)
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "pseudo": (target.argmax(1), ones)}
        return loss_x + w * loss_u, logs
