"""Named view recipes: which batched ops make a training view, with which strengths."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from replearn.registry import Registry
from replearn.views import ops


@dataclass(frozen=True)
class ViewRecipe:
    """One augmentation pipeline: crop+flip, colour jitter, grayscale, blur, solarize, normalise."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __call__(
        self, images: torch.Tensor, size: int, mean, std, generator: torch.Generator
    ) -> torch.Tensor:
        """uint8 or float (N, C, H, W) -> one augmented, normalised float view (N, C, size, size)."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        n, _, height, width = x.shape
        boxes = ops.sample_crop_boxes(n, height, width, self.crop_scale, self.crop_ratio, generator, x.device)
        flip = torch.rand(n, generator=generator, device=x.device) < self.flip_p
        x = ops.resized_crop(x, boxes, size, flip)
        if self.jitter_p > 0:
            x = ops.color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, self.jitter_p, generator)
        x = ops.random_grayscale(x, self.gray_p, generator)
        if self.blur_p > 0:
            x = ops.gaussian_blur(x, self.blur_sigma, self.blur_p, generator)
        x = ops.solarize(x, self.solarize_p, generator)
        return ops.normalize(x, mean, std)


RECIPES: Registry[ViewRecipe] = Registry("view recipe")
RECIPES.register("simclr")(ViewRecipe())  # SimCLR's recipe (arXiv:2002.05709, appendix A)
# Small grayscale images (28 px): a crop under ~20% of the area holds too little of the object, and a
# 3-px blur kernel mostly erases strokes, so both are milder.
RECIPES.register("simclr-small")(ViewRecipe(crop_scale=(0.2, 1.0), blur_p=0.0))
# Image-text pairs: the caption describes the whole image, so a light crop and a flip only (CLIP
# trained with a random square crop alone, arXiv:2103.00020).
RECIPES.register("crop-flip")(ViewRecipe(crop_scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0))


def eval_view(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The evaluation view: no augmentation, scale to [0, 1] and normalise."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    return ops.normalize(x, mean, std)


def weak_view(images: torch.Tensor, mean, std, generator: torch.Generator, flip_p: float = 0.5,
              max_shift_frac: float = 0.125, normalize: bool = True) -> torch.Tensor:
    """The weak view of semi-supervised learning (FixMatch, MixMatch): a horizontal flip with
    probability ``flip_p`` and a shift of up to ``max_shift_frac`` of the side (reflect fill);
    ``normalize=False`` returns it in [0, 1], for strong ops to follow."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < flip_p
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    x = ops.translate_reflect(x, round(max_shift_frac * min(x.shape[2], x.shape[3])), generator)
    return ops.normalize(x, mean, std) if normalize else x


def multi_crop(
    images: torch.Tensor,
    base: ViewRecipe,
    size: int,
    mean,
    std,
    generator: torch.Generator,
    n_large: int = 2,
    n_small: int = 4,
    small_size: int | None = None,
    large_scale: tuple[float, float] = (0.35, 1.0),
    small_scale: tuple[float, float] = (0.08, 0.35),
) -> list[torch.Tensor]:
    """SwAV's multi-crop (arXiv:2006.09882): ``n_large`` views at ``size`` from crops covering
    ``large_scale`` of the image, then ``n_small`` views at ``small_size`` (default ~3/7 of
    ``size``, as 96 is of 224) from crops covering ``small_scale``; the other ops are ``base``'s."""
    small_size = small_size or max(8, round(size * 3 / 7))
    large, small = replace(base, crop_scale=large_scale), replace(base, crop_scale=small_scale)
    views = [large(images, size, mean, std, generator) for _ in range(n_large)]
    return views + [small(images, small_size, mean, std, generator) for _ in range(n_small)]


def recipe(name: str, **overrides) -> ViewRecipe:
    base = RECIPES.get(name)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
