"""DINO: a student matches a momentum teacher's centred, sharpened outputs across crops (arXiv:2104.14294)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch
from torch import nn

from replearn.losses.dino import dino_loss, updated_center
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp
from replearn.nn.momentum import cosine_momentum, ema_update_, frozen_copy
from replearn.nn.prototypes import Prototypes
from replearn.views import multi_crop


def _encode(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]):
    """(features, outputs) of every view, one backbone pass per crop size (BN sees one resolution)."""
    h = torch.cat([backbone(torch.cat(list(g))) for _, g in groupby(views, key=lambda v: v.shape[-2:])])
    return h, head(h)


@METHODS.register("dino")
class DINO(Method):
    """DINO: self-distillation; every crop's student output matches an EMA teacher's sharpened large crops."""

    views = "simclr"
    n_views = 6  # 2 global + Args.n_small local crops
    paper = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021 (arXiv:2104.14294)"

    @dataclass
    class Args:
        out_dim: int = 2048  # K of the last layer (paper: 65536 for ImageNet; 10 classes, 60k images here)
        n_small: int = 4  # local crops (paper: 10 at 96 px beside 2 at 224 px)
        small_size: int = 0  # local crops' side; 0: 3/7 of the image size (96/224), 12 px for 28 px
        momentum: float = 0.99  # teacher EMA, cosine to 1 (paper 0.996 over 100+ epochs; 2,340 steps here)
        student_temp: float = 0.1  # paper: 0.1
        warmup_teacher_temp: float = 0.04  # teacher temperature at the start (paper: 0.04)
        teacher_temp: float = 0.06  # after the warm-up (paper: 0.04-0.07)
        teacher_temp_epochs: float = 3.0  # linear warm-up length (paper: 30 of 100-300 epochs)
        center_momentum: float = 0.9  # EMA of the teacher's batch mean (paper: 0.9)
        head_bn: bool = True  # BN in the head's hidden layers (the paper's ViT head has none)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        self.n_views = 2 + a.n_small
        # paper's head: 3-layer MLP -> bottleneck -> L2-normalise -> weight-normalised linear (gain 1)
        norm = nn.BatchNorm1d if a.head_bn else None
        self.head = nn.Sequential(
            mlp([backbone.out_dim, opts.proj_hidden, opts.proj_hidden, opts.proj_dim], norm_layer=norm),
            Prototypes(opts.proj_dim, a.out_dim, weight_norm=True),
        )
        self.teacher = frozen_copy(nn.ModuleList([backbone, self.head]))
        self.register_buffer("center", torch.zeros(a.out_dim))

    def make_views(self, images, recipe, size, mean, std, generator):
        small = self.args.small_size or None  # the first view is a large crop (its features are logged)
        return multi_crop(images, recipe, size, mean, std, generator, n_small=self.args.n_small, small_size=small)

    def teacher_temp(self) -> float:
        """Linear from warmup_teacher_temp to teacher_temp over the first teacher_temp_epochs, then flat."""
        a, epochs = self.args, self.progress * self.max_epochs
        ramp = min(1.0, epochs / a.teacher_temp_epochs) if a.teacher_temp_epochs > 0 else 1.0
        return a.warmup_teacher_temp + (a.teacher_temp - a.warmup_teacher_temp) * ramp

    def training_step(self, views, index):
        n = len(index)
        h, s = _encode(self.backbone, self.head, views)  # (V*N, D), (V*N, K)
        with torch.no_grad():
            _, t = _encode(self.teacher[0], self.teacher[1], views[:2])  # the teacher sees the large crops only
        tt = self.teacher_temp()
        a = self.args
        loss = dino_loss(s.view(len(views), n, -1), t.view(2, n, -1), self.center, a.student_temp, tt)
        self.center.copy_(updated_center(self.center, t, a.center_momentum))  # used from the next step on
        return loss, {"features": h[:n].detach(), "teacher_temp": tt}

    def after_step(self):
        m = cosine_momentum(self.args.momentum, self.progress)
        ema_update_(self.teacher, nn.ModuleList([self.backbone, self.head]), m)
