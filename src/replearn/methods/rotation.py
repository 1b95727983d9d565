"""RotNet: predict which of four rotations (0, 90, 180, 270 degrees) an image went through (arXiv:1803.07728)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import mlp
from replearn.views.pretext import rotate


@METHODS.register("rotation")
class Rotation(Method):
    """Rotation (RotNet): an MLP on backbone features classifies each image's rotation by k * 90 degrees.

    Every image is augmented once (mildly: the default recipe is ``simclr-small``) and then shown in
    all four rotations in the same batch, which the paper found better than one random rotation per
    image; view k is the batch rotated by k * 90 degrees counter-clockwise, so the view's position
    is its label. The paper puts the classifier on a convolutional block; here it is an MLP
    (D -> proj_hidden -> 4, BN + ReLU) on the pooled features, as the backbone ends in pooling.
    """

    views = "simclr-small"
    n_views = 4
    paper = (
        "Gidaris et al., Unsupervised Representation Learning by Predicting Image Rotations, "
        "ICLR 2018 (arXiv:1803.07728)"
    )

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.classifier = mlp([backbone.out_dim, opts.proj_hidden, 4])

    def make_views(self, images, recipe, size, mean, std, generator):
        x = recipe(images, size, mean, std, generator)
        return [rotate(x, torch.full((len(x),), k, device=x.device)) for k in range(4)]

    def training_step(self, views, index):
        n = len(views[0])
        h = self.backbone(torch.cat(views))  # (4N, D): BN sees every rotation
        target = torch.arange(len(views), device=h.device).repeat_interleave(n)
        logits = self.classifier(h).float()
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean()
        return loss, {"features": h[:n].detach(), "rotation_acc": accuracy.detach()}
