"""Batched views: per-sample parameters, and each op equal to torchvision's on the same parameters."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from replearn.views import eval_view, ops, recipe, recipes


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_per_sample_parameters_differ_within_a_batch():
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(16, -1, -1, -1).contiguous()
    v = recipe("simclr")(img, 32, (0.5,) * 3, (0.5,) * 3, _gen())
    flat = v.flatten(1)
    distinct = {tuple(torch.round(r[:64] * 1e4).tolist()) for r in flat}
    assert len(distinct) == 16  # the same image gave 16 different views


def test_same_seed_same_views_other_seed_other_views():
    img = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    r = recipe("simclr")
    a, b, c = (r(img, 28, (0.5,), (0.5,), _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_crop_boxes_respect_scale_ratio_and_bounds():
    boxes = ops.sample_crop_boxes(4000, 28, 40, (0.2, 0.9), (3 / 4, 4 / 3), _gen(), "cpu")
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 40).all()
    area = h * w / (28 * 40)
    # rounding of h, w to whole pixels moves area and ratio a little outside the continuous range
    assert area.min() > 0.2 * 0.85 and area.max() < 0.9 * 1.15
    ratio = w / h
    assert ratio.min() > 0.75 * 0.8 and ratio.max() < 4 / 3 * 1.25
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # per-sample boxes


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("box,size", [((3, 5, 12, 17), 28), ((0, 0, 28, 28), 28), ((10, 2, 18, 9), 12), ((4, 4, 20, 20), 7)])
def test_fixed_crop_and_flip_match_torchvision(box, size, flip):
    x = torch.rand(2, 3, 28, 28)
    boxes = torch.tensor([box, box], dtype=torch.float32)
    ours = ops.resized_crop(x, boxes, size, torch.tensor([flip, flip]))
    ref = TF.resized_crop(x, *box, [size, size], antialias=False)
    if flip:
        ref = TF.horizontal_flip(ref)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_upsampling_crop_matches_torchvision_default_antialias():
    # antialiasing only acts when shrinking; a crop enlarged to the output matches the default call
    x = torch.rand(1, 1, 28, 28)
    box = (6, 2, 14, 11)
    ours = ops.resized_crop(x, torch.tensor([box], dtype=torch.float32), 28)
    torch.testing.assert_close(ours, TF.resized_crop(x, *box, [28, 28]), atol=1e-5, rtol=0)


def test_colour_adjustments_match_torchvision_per_sample():
    x = torch.rand(3, 3, 16, 16)
    b, c, s, h = torch.tensor([0.7, 1.2, 1.0]), torch.tensor([1.3, 0.6, 1.0]), torch.tensor([0.5, 1.4, 1.0]), torch.tensor([0.05, -0.1, 0.0])
    ours = ops.adjust_colors(x, b, c, s, h)
    for i in range(3):
        ref = TF.adjust_brightness(x[i], b[i].item())
        ref = TF.adjust_contrast(ref, c[i].item())
        ref = TF.adjust_saturation(ref, s[i].item())
        ref = TF.adjust_hue(ref, h[i].item())
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=0)  # float32 HSV round-off


def test_grayscale_contrast_on_one_channel():
    x = torch.rand(2, 1, 8, 8)
    ours = ops.adjust_colors(x, None, torch.tensor([0.5, 2.0]))
    for i, f in enumerate((0.5, 2.0)):
        torch.testing.assert_close(ours[i], TF.adjust_contrast(x[i], f), atol=1e-6, rtol=0)


def test_blur_matches_torchvision_per_sample():
    x = torch.rand(3, 3, 20, 20)
    sigma = torch.tensor([0.5, 1.7, 0.0])
    k = ops.blur_kernel_size(20, 20) + 4  # a wider kernel than the default shows the tails too
    ours = ops.blur(x, sigma, k)
    for i in range(2):
        ref = TF.gaussian_blur(x[i], [k, k], [sigma[i].item(), sigma[i].item()])
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[2], x[2])  # sigma 0: untouched


def test_solarize_and_grayscale_are_per_sample():
    x = torch.rand(200, 3, 4, 4)
    out = ops.solarize(x, 0.5, _gen(), threshold=0.5)
    changed = (out != x).flatten(1).any(1)
    assert 60 < changed.sum() < 140  # about half of the samples
    assert torch.equal(out[changed][x[changed] >= 0.5], 1 - x[changed][x[changed] >= 0.5])
    g = ops.random_grayscale(x, 0.5, _gen())
    gray = (g[:, 0] == g[:, 1]).flatten(1).all(1) & (g[:, 1] == g[:, 2]).flatten(1).all(1)
    assert 60 < gray.sum() < 140
    ref = 0.299 * x[gray, 0] + 0.587 * x[gray, 1] + 0.114 * x[gray, 2]
    torch.testing.assert_close(g[gray, 0], ref)


def test_eval_view_only_scales_and_normalises():
    img = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    out = eval_view(img, (0.5,), (0.25,))
    torch.testing.assert_close(out, (img.float() / 255 - 0.5) / 0.25)


def test_views_run_on_the_batch_device_and_dtype():
    img = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    v = recipe("simclr")(img, 12, (0.5,) * 3, (0.5,) * 3, _gen())
    assert v.shape == (4, 3, 12, 12) and v.dtype == torch.float32
    assert math.isfinite(v.sum().item())


def test_translate_reflect_matches_a_per_sample_pad_and_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 9, 11, generator=g)
    got = ops.translate_reflect(x, 3, torch.Generator().manual_seed(5))
    # the same offsets, drawn as the op draws them, applied one sample at a time
    off = torch.randint(0, 7, (6, 2), generator=torch.Generator().manual_seed(5))
    for i in range(6):
        padded = torch.nn.functional.pad(x[i : i + 1], (3, 3, 3, 3), mode="reflect")[0]
        dy, dx = off[i].tolist()
        torch.testing.assert_close(got[i], padded[:, dy : dy + 9, dx : dx + 11], atol=0, rtol=0)
    assert torch.equal(ops.translate_reflect(x, 0, g), x)
    assert len({tuple(o) for o in off.tolist()}) > 1  # the samples do get different shifts


def test_weak_view_flips_and_shifts_only():
    x = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    v = recipes.weak_view(x, (0.0,), (1.0,), torch.Generator().manual_seed(0), max_shift_frac=0.0)
    flipped = [bool(torch.equal(v[i], x[i].flip(2).float() / 255)) for i in range(64)]
    same = [bool(torch.equal(v[i], x[i].float() / 255)) for i in range(64)]
    assert all(a != b for a, b in zip(flipped, same, strict=True)) and 16 < sum(flipped) < 48
