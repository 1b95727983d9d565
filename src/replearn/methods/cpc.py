"""CPC v2: a causal context network over a grid of patch encodings predicts the patches below
(arXiv:1905.09272)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from replearn.errors import ReplearnError
from replearn.losses.cpc import cpc_info_nce
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.views import ops


class RowCausalContext(nn.Module):
    """CPC v2's context network, PixelCNN-lite: residual blocks whose 2x3 convolutions are padded
    only above, so output row r sees input rows <= r (all columns) and never a row it predicts."""

    def __init__(self, dim: int, hidden: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, hidden, 1),
                nn.ReLU(),
                nn.ZeroPad2d((1, 1, 1, 0)),  # (left, right, top, bottom): nothing from below
                nn.Conv2d(hidden, hidden, (2, 3)),
                nn.ReLU(),
                nn.Conv2d(hidden, dim, 1),
            )
            for _ in range(blocks)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, D, G, G) -> (N, D, G, G)
        for block in self.blocks:
            z = z + block(z)
        return z


def cut_patches(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(N, C, S, S) -> the overlapping grid of patches (N*G*G, C, patch, patch), row-major per image."""
    c = x.shape[1]
    p = x.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, C, G, G, patch, patch)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, patch, patch)


@contextlib.contextmanager
def bn_running_stats_frozen(module: nn.Module, frozen: bool = True):
    """BN still normalises with batch statistics, but momentum 0 leaves its running statistics as they are."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if frozen else []
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum


@METHODS.register("cpc")
class CPC(Method):
    """CPC v2: patches -> backbone -> row-causal context net; W_k predicts the patch k rows below (InfoNCE).

    Each prediction is scored against the same patch position in every image of the batch and the
    other patches of its own image (losses.cpc.cpc_info_nce). The probe later runs the backbone on whole 28-px images, so the patches stay at the images' own
    pixel scale (12 px, no resizing: the convnet's filters see strokes at the size they will see
    them) and BN's running statistics come from whole images (``full_image_bn``). A 12-px patch
    ends in a 1x1 map where a whole image ends in 3x3 before pooling, so the features transfer
    less directly than those of whole-image methods: expect it below SimCLR.
    """

    views = "simclr-small"
    n_views = 1  # make_views returns [whole images, their patches]
    paper = "Henaff et al., Data-Efficient Image Recognition with Contrastive Predictive Coding, ICML 2020 (arXiv:1905.09272)"

    @dataclass
    class Args:
        grid: int = 5  # patches per side (CPC v2: 7x7 on 224 px); 28 px -> 12-px patches, stride 4
        patch_frac: float = 3 / 7  # patch side / image side (at least 8 px, the convnet's smallest input)
        steps: int = 3  # K: predict 1..K rows ahead (CPC v2: up to 5 of 7)
        directions: int = 4  # 1: top-down (CPC v1); 2: + bottom-up; 4: + both horizontal ones (CPC v2)
        context_hidden: int = 64  # width inside the context network's residual blocks (cheap)
        context_blocks: int = 2  # each block lets row r see one more row above
        patch_crop_min: float = 0.6  # per-patch crop's smallest area (the recipe's crop is per image)
        full_image_bn: bool = True  # BN running stats from whole images (what the probe sees), not patches

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a, d = self.args, backbone.out_dim
        if not 1 <= a.steps < a.grid or a.directions not in (1, 2, 4):
            got = f"steps={a.steps}, grid={a.grid}, directions={a.directions}"
            msg = f"cpc needs 1 <= steps < grid and directions 1, 2 or 4 (got {got})"
            raise ReplearnError(msg, "e.g. grid=5,steps=3,directions=4")
        contexts = (RowCausalContext(d, a.context_hidden, a.context_blocks) for _ in range(a.directions))
        self.contexts = nn.ModuleList(contexts)
        self.predictors = nn.ModuleList(nn.Conv2d(d, a.steps * d, 1) for _ in range(a.directions))  # W_1..W_K
        self.temperature = opts.temperature

    def geometry(self, size: int) -> tuple[int, int, int]:
        """(patch, stride, canvas): images are resized to the canvas, which the grid tiles exactly."""
        patch = max(8, round(size * self.args.patch_frac))
        stride = max(1, round((size - patch) / (self.args.grid - 1)))
        return patch, stride, patch + stride * (self.args.grid - 1)

    def make_views(self, images, recipe, size, mean, std, generator):
        patch, stride, canvas = self.geometry(size)
        x = images.float().div(255) if images.dtype == torch.uint8 else images
        n, _, h, w = x.shape
        boxes = ops.sample_crop_boxes(n, h, w, recipe.crop_scale, recipe.crop_ratio, generator, x.device)
        flip = torch.rand(n, generator=generator, device=x.device) < recipe.flip_p
        x = ops.resized_crop(x, boxes, canvas, flip)  # (N, C, canvas, canvas) in [0, 1]
        whole = x if canvas == size else F.interpolate(x, size=size, mode="bilinear")
        whole = ops.normalize(whole, mean, std)
        # CPC v2 augments every patch on its own, so neighbours share no colour or exact pixel grid
        per_patch = replace(recipe, crop_scale=(self.args.patch_crop_min, 1.0))
        return [whole, per_patch(cut_patches(x, patch, stride), patch, mean, std, generator)]

    def training_step(self, views, index):
        n, g, k_max, a = len(index), self.args.grid, self.args.steps, self.args
        whole = views[0]
        if len(views) > 1:
            patches = views[1]
        else:  # whole images from a caller that skips make_views: cut them without per-patch augmentation
            patch, stride, canvas = self.geometry(whole.shape[-1])
            x = F.interpolate(whole, size=canvas, mode="bilinear") if canvas != whole.shape[-1] else whole
            patches = cut_patches(x, patch, stride)
        with bn_running_stats_frozen(self.backbone, a.full_image_bn):
            z = self.backbone(patches)  # (N*G*G, D)
        d = z.shape[1]
        if a.full_image_bn:
            with torch.no_grad():  # the probe sees whole images: BN's running statistics come from those
                h = self.backbone(whole)
        else:
            h = z.detach().reshape(n, g * g, d).mean(1)
        z = z.reshape(n, g, g, d).permute(0, 3, 1, 2)  # (N, D, G, G)
        losses = []
        for turn, context, predictor in zip((0, 2, 1, 3), self.contexts, self.predictors, strict=False):
            # turn x 90 degrees: top-down, bottom-up, then the two horizontal directions
            zt = torch.rot90(z, turn, dims=(2, 3))  # predict down the rows of the turned grid
            pred = predictor(context(zt)).reshape(n, k_max, d, g, g)  # pred[:, k-1, :, r] = W_k c_r
            for k in range(1, k_max + 1):
                p = pred[:, k - 1, :, : g - k].flatten(2).transpose(1, 2)  # (N, (G-k)*G, D), rows 0..G-k-1
                t = zt[:, :, k:].flatten(2).transpose(1, 2)  # the patches k rows below, same order
                losses.append(cpc_info_nce(p, t, self.temperature))
        return torch.stack(losses).mean(), {"features": h.detach()}
