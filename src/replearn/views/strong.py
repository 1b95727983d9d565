"""Strong views for semi-supervised learning, batched with per-sample ops: FixMatch's RandAugment + Cutout
(arXiv:2001.07685, appendix, Table 12) and ReMixMatch's CTAugment (arXiv:1911.09785, section 3.2.2).

Every op is ``op(x, m) -> x`` on float images (B, C, H, W) in [0, 1] with per-sample magnitudes m (B,) in
[0, 1]. One table serves RandAugment and CTAugment, with these magnitude conventions:

- unsigned ops grow with m and m = 0 leaves an 8-bit image as it is: posterize keeps 8 - floor(5m) bits
  (8, 7, 6, 5, 4, each for a fifth of [0, 1]); solarize inverts the pixels strictly above 1 - m.
- signed ops map m linearly onto [-max, max], so m = 0.5 is the identity and both ends are strongest (the
  convention of ReMixMatch's CTAugment code: a magnitude bin knows its sign, and a uniform m gives FixMatch's
  random sign): rotate by (2m - 1) * 30 degrees counter-clockwise, shear_x/shear_y by (2m - 1) * 0.3,
  translate_x/translate_y by (2m - 1) * 0.3 of the side, and brightness, color, contrast, sharpness with the
  enhance factor 1 + 0.9 (2m - 1) in [0.1, 1.9] (FixMatch's code; 1 is the original image).
- identity, autocontrast and equalize ignore m.

Geometric ops resample bilinearly about the image centre with one batched ``grid_sample`` and fill with 0
(black), as torchvision's ``affine`` with ``fill=None``; cutout fills with 0.5 gray (FixMatch's 0 in [-1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from replearn.views.ops import adjust_colors

ROTATE_DEG = 30.0
SHEAR = 0.3
TRANSLATE = 0.3  # fraction of the side
ENHANCE = 0.9  # factor 1 + ENHANCE * (2m - 1)


def _signed(x: torch.Tensor, m: torch.Tensor, max_value: float) -> torch.Tensor:
    """m in [0, 1] -> (2m - 1) * max_value, per sample (B,) in x's dtype."""
    return (2 * m.to(device=x.device, dtype=x.dtype) - 1) * max_value


def _levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit value of each pixel as torchvision converts float to uint8: floor(x * 255.999)."""
    return (x * (256 - 1e-3)).long().clamp_(0, 255)


def identity(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x


def autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each sample to [0, 1]; a constant channel stays as it is (torchvision's rule)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), hi - lo)
    return ((x - torch.where(flat, torch.zeros_like(lo), lo)) / scale).clamp_(0, 1)


def brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return adjust_colors(x, brightness=1 + _signed(x, m, ENHANCE))


def color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Saturation: blend with the gray image; a 1-channel image stays as it is."""
    return adjust_colors(x, saturation=1 + _signed(x, m, ENHANCE))


def contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return adjust_colors(x, contrast=1 + _signed(x, m, ENHANCE))


def equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per sample and channel over 256 bins, with PIL's lookup table (as torchvision):
    lut[k] = (cum[k-1] + step // 2) // step, step = (pixels not in the top occupied bin) // 255. The output is
    on the 8-bit levels; a channel with step 0 (nearly constant) stays as it is."""
    b, c, h, w = x.shape
    q = _levels(x).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    cum = hist.cumsum(1)  # (BC, 256)
    top = cum.argmax(1, keepdim=True)  # first bin reaching the total = the highest occupied level
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")  # (BC, 1)
    lut = torch.div(
        cum[:, :-1] + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1), rounding_mode="floor"
    )
    lut = torch.cat([torch.zeros_like(step), lut.clamp_(0, 255)], 1)  # lut[0] = 0
    out = (lut.gather(1, q).to(x.dtype) / 255).view(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


def posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Keep the top 8 - floor(5m) bits (8..4) of each 8-bit value, as PIL and torchvision's uint8 path do; the
    output is on the 8-bit levels. (torchvision's float path maps to multiples of 2^-bits instead.)"""
    q = _levels(x)
    drop = torch.floor(5 * m.to(device=x.device, dtype=torch.float32)).clamp_(0, 4).long()  # bits dropped
    step = (2**drop).view(-1, 1, 1, 1)
    return (q - q % step).to(x.dtype) / 255


def sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend each sample with its smoothed copy (3x3 kernel, 5 in the centre and 1 around, / 13) by the enhance
    factor; the 1-pixel border stays as it is, as in PIL and torchvision."""
    b, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    kern = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kern[1, 1] = 5
    smooth = F.conv2d(x.reshape(b * c, 1, h, w), (kern / 13).view(1, 1, 3, 3)).view(b, c, h - 2, w - 2)
    f = (1 + _signed(x, m, ENHANCE)).view(-1, 1, 1, 1)
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.lerp(smooth, x[..., 1:-1, 1:-1], f)  # f * x + (1 - f) * smooth
    return out.clamp_(0, 1)


def solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Invert the pixels strictly above the threshold 1 - m (m = 0 inverts none, m = 1 all but black)."""
    t = (1 - m.to(device=x.device, dtype=x.dtype)).view(-1, 1, 1, 1)
    return torch.where(x > t, 1 - x, x)


def warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample each sample through its own inverse affine map (B, 2, 3), which takes an output pixel to the
    input pixel it reads, in pixel units centred on the image (x right, y down); bilinear, zero fill.

    Equals torchvision's tensor ``affine`` with the same inverse matrix: both sample with
    ``align_corners=False``, so the normalised map is the pixel map scaled by (W / 2, H / 2)."""
    n, c, h, w = x.shape
    a = inverse.to(x.dtype)
    theta = torch.stack(
        [
            torch.stack([a[:, 0, 0], a[:, 0, 1] * (h / w), a[:, 0, 2] * (2 / w)], 1),
            torch.stack([a[:, 1, 0] * (w / h), a[:, 1, 1], a[:, 1, 2] * (2 / h)], 1),
        ],
        1,
    )  # (B, 2, 3) on grid_sample's [-1, 1] coordinates
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _linear(a00, a01, a02, a10, a11, a12) -> torch.Tensor:
    return torch.stack([torch.stack([a00, a01, a02], -1), torch.stack([a10, a11, a12], -1)], -2)


def rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise by (2m - 1) * 30 degrees about the centre (torchvision's ``rotate`` sense)."""
    t = _signed(x, m, math.radians(ROTATE_DEG))
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    return warp(x, _linear(cos, -sin, zero, sin, cos, zero))


def shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Output (u, v) reads input (u + s v, v), s = (2m - 1) * 0.3, about the centre (PIL's shear matrix)."""
    s = _signed(x, m, SHEAR)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return warp(x, _linear(one, s, zero, zero, one, zero))


def shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Output (u, v) reads input (u, v + s u), s = (2m - 1) * 0.3, about the centre."""
    s = _signed(x, m, SHEAR)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return warp(x, _linear(one, zero, zero, s, one, zero))


def translate_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Move the content right by (2m - 1) * 0.3 * W pixels (left when negative)."""
    t = _signed(x, m, TRANSLATE * x.shape[3])
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return warp(x, _linear(one, zero, -t, zero, one, zero))


def translate_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Move the content down by (2m - 1) * 0.3 * H pixels (up when negative)."""
    t = _signed(x, m, TRANSLATE * x.shape[2])
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return warp(x, _linear(one, zero, zero, zero, one, -t))


# FixMatch's RandAugment table (Table 12); an op's id is its position here
OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": identity,
    "autocontrast": autocontrast,
    "brightness": brightness,
    "color": color,
    "contrast": contrast,
    "equalize": equalize,
    "posterize": posterize,
    "rotate": rotate,
    "sharpness": sharpness,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "solarize": solarize,
    "translate_x": translate_x,
    "translate_y": translate_y,
}
OP_NAMES = tuple(OPS)


def apply_ops(x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Apply to sample i the ops ``ops[i, 0], ops[i, 1], ...`` (ids into OPS, (B, D)) in that order with
    magnitudes (B, D). Loops over the D steps and the table, never over samples: at each step every op
    transforms, in one call, the samples that chose it. Runs in x's dtype even inside an autocast region
    (a training step under bf16 autocast): views are made at full precision, only the model is cast."""
    out = x.clone()
    fns = list(OPS.values())
    with torch.autocast(x.device.type, enabled=False):
        for j in range(ops.shape[1]):
            for k, idx in enumerate(_groups(ops[:, j], len(fns))):
                if k != 0 and idx.numel() > 0:  # op 0 is the identity
                    out[idx] = fns[k](out[idx], magnitudes[idx, j])
    return out


def _groups(ids: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Sample indices per id 0..n-1, from one sort (one host sync instead of one per id)."""
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=n).tolist()
    return list(torch.split(order, counts))


def cutout(x: torch.Tensor, size_frac: float, g: torch.Generator, fill: float = 0.5) -> torch.Tensor:
    """Cutout (arXiv:1708.04552) as FixMatch uses it: per sample, a square of side round(u * size_frac *
    min(H, W)) pixels, u ~ U(0, 1), centred on a uniform pixel (rows cy - side // 2 up to side rows, clipped
    at the border), set to ``fill`` in every channel. size_frac <= 0 returns x and draws nothing."""
    if size_frac <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    side = torch.round(torch.rand(n, generator=g, device=dev) * (size_frac * min(h, w))).long()
    cy = torch.randint(0, h, (n,), generator=g, device=dev)
    cx = torch.randint(0, w, (n,), generator=g, device=dev)
    top = (cy - torch.div(side, 2, rounding_mode="floor"))[:, None]
    left = (cx - torch.div(side, 2, rounding_mode="floor"))[:, None]
    rows = torch.arange(h, device=dev)[None]
    cols = torch.arange(w, device=dev)[None]
    in_rows = (rows >= top) & (rows < top + side[:, None])  # (B, H)
    in_cols = (cols >= left) & (cols < left + side[:, None])  # (B, W)
    inside = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(inside, torch.full_like(x, fill), x)


def rand_augment(
    x: torch.Tensor,
    g: torch.Generator,
    n_ops: int = 2,
    magnitude: float | None = None,
    cutout_frac: float = 0.5,
    return_choices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's RandAugment (arXiv:2001.07685): per sample ``n_ops`` ops drawn uniformly from OPS with
    replacement, each with a magnitude uniform in [0, 1] (``magnitude=None``, FixMatch's variant) or the fixed
    ``magnitude``, then cutout of side up to ``cutout_frac`` of the image (0 switches it off).

    With ``return_choices`` also returns the op ids (B, n_ops) and magnitudes (B, n_ops)."""
    n, dev = x.shape[0], x.device
    ops = torch.randint(0, len(OPS), (n, n_ops), generator=g, device=dev)
    if magnitude is None:
        mags = torch.rand(n, n_ops, generator=g, device=dev)
    else:
        mags = torch.full((n, n_ops), float(magnitude), device=dev)
    out = cutout(apply_ops(x, ops, mags), cutout_frac, g)
    return (out, ops, mags) if return_choices else out


class Choices(NamedTuple):
    """Per-sample op ids, magnitude bins and magnitudes, each (B, depth)."""

    ops: torch.Tensor
    bins: torch.Tensor
    magnitudes: torch.Tensor


class CTAugment(nn.Module):
    """ReMixMatch's CTAugment (arXiv:1911.09785, section 3.2.2): the magnitude of each op is learned online
    from how well the model still classifies labelled "probe" images augmented with it.

    State: a weight per op and magnitude bin (a buffer, so checkpoints carry it), initially 1. Training views
    draw ``depth`` ops uniformly, each op's bin with probability proportional to its weight after zeroing the
    bins below ``threshold`` (uniform over the op's bins when all are below; ReMixMatch's code instead
    thresholds weights relative to the op's largest), a magnitude uniform within the bin, then cutout.
    """

    def __init__(
        self,
        n_bins: int = 17,
        decay: float = 0.99,
        threshold: float = 0.8,
        depth: int = 2,
        cutout_frac: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_bins, self.decay, self.threshold = n_bins, decay, threshold
        self.depth, self.cutout_frac = depth, cutout_frac
        self.register_buffer("weights", torch.ones(len(OPS), n_bins))  # (n_ops, n_bins)

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, decay={self.decay}, threshold={self.threshold}, depth={self.depth}"

    def bin_probs(self) -> torch.Tensor:
        """(n_ops, n_bins) sampling probabilities of the bins of each op for training views."""
        w = torch.where(self.weights >= self.threshold, self.weights, torch.zeros_like(self.weights))
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        return w / w.sum(1, keepdim=True)

    def _augment(
        self, x: torch.Tensor, g: torch.Generator, bins_from: torch.Tensor | None
    ) -> tuple[torch.Tensor, Choices]:
        n, dev = x.shape[0], x.device
        ops = torch.randint(0, len(OPS), (n, self.depth), generator=g, device=dev)
        if bins_from is None:  # probe: uniform bins
            bins = torch.randint(0, self.n_bins, (n, self.depth), generator=g, device=dev)
        else:
            p = bins_from.to(dev)[ops].view(-1, self.n_bins)  # (B * depth, n_bins)
            bins = torch.multinomial(p, 1, generator=g).view(n, self.depth)
        mags = (bins + torch.rand(n, self.depth, generator=g, device=dev)) / self.n_bins
        return apply_ops(x, ops, mags), Choices(ops, bins, mags)

    def probe(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, Choices]:
        """Probe views of a labelled batch: ``depth`` uniform ops, bins drawn uniformly, no cutout; returns the
        views and the choices to pass to ``update`` with the model's predictions on them."""
        return self._augment(x, g, None)

    def forward(
        self, x: torch.Tensor, g: torch.Generator, return_choices: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Choices]:
        """Strong training views: ``depth`` uniform ops with bins drawn from ``bin_probs``, then cutout."""
        out, choices = self._augment(x, g, self.bin_probs())
        out = cutout(out, self.cutout_frac, g)
        return (out, choices) if return_choices else out

    @torch.no_grad()
    def update(self, choices: Choices | tuple, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """For probe sample i with proximity w_i = 1 - 0.5 * sum_k |probs[i, k] - onehot(labels[i])_k|, move
        each (op, bin) it used: weight <- decay * weight + (1 - decay) * w_i.

        Semantics: the updates apply in batch order, sample by sample and, within a sample, step by step (a
        sample that used the same (op, bin) twice moves it twice), exactly as a Python loop over
        ``(i, j)``. Batched by the closed form of n successive updates of one cell with w_1..w_n:
        decay^n * weight + (1 - decay) * sum_t decay^(n - t) w_t."""
        ops, bins = choices[0], choices[1]
        dev = self.weights.device
        n_cells = self.weights.numel()
        onehot = F.one_hot(labels.long(), probs.shape[1]).to(torch.float64)
        prox = 1 - 0.5 * (probs.to(torch.float64) - onehot).abs().sum(1)  # (B,)
        depth = ops.shape[1]
        cell = (ops.long() * self.n_bins + bins.long()).reshape(-1).to(dev)  # row-major = the loop's order
        prox = prox.to(dev).repeat_interleave(depth)  # (B * depth,)
        cell_sorted, order = torch.sort(cell, stable=True)  # stable: batch order within a cell
        counts = torch.bincount(cell, minlength=n_cells)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(cell.numel(), device=dev) - first[cell_sorted]
        later = counts[cell_sorted] - 1 - rank  # updates of the same cell after this one
        rho = torch.tensor(self.decay, dtype=torch.float64, device=dev)
        gain = (1 - rho) * rho ** later.double() * prox[order]
        w = self.weights.view(-1).double()
        w = rho ** counts.double() * w + torch.zeros_like(w).scatter_add_(0, cell_sorted, gain)
        self.weights.copy_(w.view_as(self.weights).to(self.weights.dtype))
