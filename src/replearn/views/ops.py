"""Batched augmentation ops: one call transforms a whole batch, each sample with its own parameters.

Every op takes float images (B, C, H, W) in [0, 1] on any device and a ``torch.Generator`` on that
device, so a run is reproducible and never loops over samples in Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    device,
    tries: int = 10,
) -> torch.Tensor:
    """Random-resized-crop boxes (N, 4) as (top, left, h, w) in pixels, torchvision's rule per sample.

    Each sample draws ``tries`` candidate (area, log-ratio) pairs at once and keeps the first that
    fits; a sample with none falls back to the central crop clipped to the ratio range.
    """
    area = height * width
    s = _uniform(n * tries, *scale, g, device).view(n, tries) * area
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), g, device).view(n, tries)
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(s * r))
    h = torch.round(torch.sqrt(s / r))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)  # first fitting try (0 if none; masked below)
    any_ok = ok.any(dim=1)
    pick = first.unsqueeze(1)
    w = w.gather(1, pick).squeeze(1)
    h = h.gather(1, pick).squeeze(1)
    # fallback: whole image, clipped to the ratio range (as torchvision does)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    # top-left uniform over valid integer positions, as torch.randint(0, H - h + 1)
    u = torch.rand(n, 2, generator=g, device=device)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    fallback_top = torch.div(height - h, 2, rounding_mode="floor")
    fallback_left = torch.div(width - w, 2, rounding_mode="floor")
    top = torch.where(any_ok, top, fallback_top)
    left = torch.where(any_ok, left, fallback_left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize to (size, size) bilinearly.

    Matches ``torchvision.transforms.functional.resized_crop(..., antialias=False)`` for integer
    boxes: sample coordinates follow ``align_corners=False`` and are clamped to the box, exactly like
    interpolating the cropped image. ``flip`` (bool, N) mirrors the output horizontally in the same pass.
    """
    n, _, height, width = x.shape
    boxes = boxes.to(x.dtype)
    top, left, h, w = boxes.unbind(1)
    steps = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5
    ys = top[:, None] + (steps[None] * (h[:, None] / size) - 0.5).clamp(min=0)
    xs = left[:, None] + (steps[None] * (w[:, None] / size) - 0.5).clamp(min=0)
    ys = torch.minimum(ys, (top + h - 1)[:, None])
    xs = torch.minimum(xs, (left + w - 1)[:, None])
    if flip is not None:
        xs = torch.where(flip[:, None], xs.flip(1), xs)
    # pixel coordinate -> grid_sample's normalised coordinate (align_corners=False)
    gy = (2 * ys + 1) / height - 1
    gx = (2 * xs + 1) / width - 1
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * a + (1 - factor) * b, clamped to [0, 1]; factor is per sample (N,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_colors(
    x: torch.Tensor,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample colour adjustment with factors (N,), in torchvision's order and formulas:
    brightness, contrast (blend with the mean gray level), saturation (blend with gray), hue shift.
    Saturation and hue leave 1-channel images as they are."""
    out = x
    if brightness is not None:
        out = (out * brightness.view(-1, 1, 1, 1)).clamp_(0, 1)
    if contrast is not None:
        out = _blend(out, _gray(out).mean(dim=(1, 2, 3), keepdim=True), contrast)
    if x.shape[1] == 3 and saturation is not None:
        out = _blend(out, _gray(out), saturation)
    if x.shape[1] == 3 and hue is not None:
        hsv = _rgb_to_hsv(out)
        hsv = torch.stack([(hsv[:, 0] + hue.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
        out = _hsv_to_rgb(hsv)
    return out


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    g: torch.Generator,
) -> torch.Tensor:
    """Colour jitter with probability p per sample, each factor drawn per sample as torchvision does."""
    n, dev = x.shape[0], x.device
    apply = _bernoulli(n, p, g, dev)

    def factor(strength: float) -> torch.Tensor | None:
        if strength <= 0:
            return None
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, g, dev)
        return torch.where(apply, f, torch.ones_like(f))

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    h = None
    if hue > 0:
        h = _uniform(n, -hue, hue, g, dev)
        h = torch.where(apply, h, torch.zeros_like(h))
    return adjust_colors(x, b, c, s, h)


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    if x.shape[1] == 1 or p <= 0:
        return x
    mask = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, _gray(x).expand_as(x), x)


def blur_kernel_size(height: int, width: int, kernel_frac: float = 0.1) -> int:
    """About ``kernel_frac`` of the image side, odd, at least 3 (SimCLR uses 10%)."""
    return max(3, int(round(kernel_frac * min(height, width))) | 1)


def blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (N,) as two grouped 1-d convolutions, reflect padding
    (the formula of torchvision's ``gaussian_blur``); sigma <= 0 leaves a sample as it is."""
    n, c, height, width = x.shape
    k = kernel_size
    t = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    s = sigma.to(x.dtype).clamp(min=1e-6)[:, None]
    kern = torch.exp(-0.5 * (t[None] / s) ** 2)
    kern = kern / kern.sum(1, keepdim=True)
    ident = torch.zeros_like(kern)
    ident[:, k // 2] = 1
    kern = torch.where((sigma > 0)[:, None], kern, ident).repeat_interleave(c, 0)  # one per (sample, channel)
    y = x.reshape(1, n * c, height, width)
    pad = k // 2
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, height, width)


def gaussian_blur(x: torch.Tensor, sigma: tuple[float, float], p: float, g: torch.Generator) -> torch.Tensor:
    """Blur with probability p per sample, sigma drawn uniformly from the range per sample."""
    n = x.shape[0]
    apply = _bernoulli(n, p, g, x.device)
    s = _uniform(n, *sigma, g, x.device)
    if not bool(apply.any()):
        return x
    return blur(x, torch.where(apply, s, torch.zeros_like(s)), blur_kernel_size(x.shape[2], x.shape[3]))


def solarize(x: torch.Tensor, p: float, g: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    if p <= 0:
        return x
    mask = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(mask & (x >= threshold), 1 - x, x)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def translate_reflect(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each sample by its own whole-pixel offset (dy, dx), each uniform in [-max_shift,
    max_shift], filling from a reflect-padded border: FixMatch's weak "pad and random crop"."""
    if max_shift <= 0:
        return x
    n, _, height, width = x.shape
    pad = F.pad(x, (max_shift,) * 4, mode="reflect")
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=g, device=x.device)
    rows = off[:, 0, None] + torch.arange(height, device=x.device)  # (N, H) rows of the padded image
    cols = off[:, 1, None] + torch.arange(width, device=x.device)  # (N, W)
    nidx = torch.arange(n, device=x.device)[:, None, None]
    return pad.permute(0, 2, 3, 1)[nidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
