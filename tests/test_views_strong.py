"""Strong views: each batched op equal to torchvision's per image, RandAugment's per-sample choices, and
CTAugment's weight update equal to a hand-worked case and a naive loop."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from replearn.views import strong
from replearn.views.strong import OP_NAMES, OPS, Choices, CTAugment, apply_ops, cutout, rand_augment


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(shape, seed=0):
    """Images on the 8-bit levels k / 255, as decoded uint8 data are."""
    return torch.randint(0, 256, shape, generator=_gen(seed)).float() / 255


def _factor(m):
    return 1 + 0.9 * (2 * m - 1)


def _affine(xi, angle=0.0, translate=(0.0, 0.0), shear=(0.0, 0.0)):
    return TF.affine(
        xi,
        angle=angle,
        translate=list(translate),
        scale=1.0,
        shear=list(shear),
        interpolation=InterpolationMode.BILINEAR,
    )


def _shear_deg(m):
    return math.degrees(math.atan((2 * m - 1) * 0.3))


# torchvision's per-image op at our magnitude m, and the tolerance of the comparison
REFERENCE = {
    "autocontrast": (lambda xi, m: TF.autocontrast(xi), 1e-6),
    "brightness": (lambda xi, m: TF.adjust_brightness(xi, _factor(m)), 1e-6),
    # ops.adjust_colors weighs red 0.299, torchvision 0.2989: gray differs by <= 1e-4
    "color": (lambda xi, m: TF.adjust_saturation(xi, _factor(m)), 2e-4),
    "contrast": (lambda xi, m: TF.adjust_contrast(xi, _factor(m)), 2e-4),
    "equalize": (lambda xi, m: TF.equalize(xi), 1e-6),
    "posterize": (
        lambda xi, m: (
            TF.posterize((xi * 255).round().to(torch.uint8), 8 - min(4, math.floor(5 * m))).float() / 255
        ),
        1e-6,
    ),
    "sharpness": (lambda xi, m: TF.adjust_sharpness(xi, _factor(m)), 1e-6),
    # strictly above 1 - m on 8-bit levels = at or above 1 - m + 1e-6; torchvision refuses a threshold > 1
    "solarize": (lambda xi, m: xi if m == 0 else TF.solarize(xi, 1 - m + 1e-6), 0.0),
    "rotate": (lambda xi, m: TF.rotate(xi, (2 * m - 1) * 30, interpolation=InterpolationMode.BILINEAR), 1e-5),
    "shear_x": (lambda xi, m: _affine(xi, shear=(_shear_deg(m), 0.0)), 1e-5),
    "shear_y": (lambda xi, m: _affine(xi, shear=(0.0, _shear_deg(m))), 1e-5),
    "translate_x": (lambda xi, m: _affine(xi, translate=((2 * m - 1) * 0.3 * xi.shape[-1], 0.0)), 1e-5),
    "translate_y": (lambda xi, m: _affine(xi, translate=(0.0, (2 * m - 1) * 0.3 * xi.shape[-2])), 1e-5),
}
MAGS = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.5, 0.66, 0.9, 1.0])


def test_reference_covers_every_op_but_identity():
    assert OP_NAMES[0] == "identity" and len(OPS) == 14
    assert set(REFERENCE) == set(OP_NAMES) - {"identity"}


@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (8, 1, 28, 28), (8, 3, 12, 20)])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_op_matches_torchvision_per_sample(name, shape):
    x = _images(shape)
    x[0, :, :2] = 128 / 255  # a partly flat channel, and
    x[1, 0] = 64 / 255  # a constant channel (autocontrast and equalize leave it)
    ref, tol = REFERENCE[name]
    ours = OPS[name](x, MAGS)
    expected = torch.stack([ref(x[i], MAGS[i].item()) for i in range(len(MAGS))])
    torch.testing.assert_close(ours, expected, atol=tol, rtol=0)


def test_geometric_ops_move_content_the_documented_way():
    x = torch.zeros(1, 1, 10, 10)
    x[0, 0, 4, 4] = 1.0
    # m = 1: +0.3 * 10 = 3 pixels right / down
    assert strong.translate_x(x, torch.tensor([1.0]))[0, 0, 4, 7] == 1.0
    assert strong.translate_y(x, torch.tensor([1.0]))[0, 0, 7, 4] == 1.0
    assert strong.translate_x(x, torch.tensor([0.0]))[0, 0, 4, 1] == 1.0
    # rotate +30 degrees counter-clockwise: the top edge's middle moves left
    y = torch.zeros(1, 1, 21, 21)
    y[0, 0, 0:3, 9:12] = 1.0
    r = strong.rotate(y, torch.tensor([1.0]))[0, 0]
    cols = r.sum(0)
    assert (cols * torch.arange(21)).sum() / cols.sum() < 8


M_FREE = ("autocontrast", "equalize")  # ignore m


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n not in M_FREE])
def test_neutral_magnitude_is_the_identity(name):
    """m = 0 for unsigned ops, m = 0.5 for signed ones; on 8-bit images."""
    x = _images((4, 3, 16, 16), seed=1)
    signed = name not in ("identity", "posterize", "solarize")
    m = torch.full((4,), 0.5 if signed else 0.0)
    torch.testing.assert_close(OPS[name](x, m), x, atol=2e-6, rtol=0)
    if name != "identity":  # and the strongest magnitude changes the image
        assert (OPS[name](x, torch.ones(4)) - x).abs().amax() > 0.05


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_keep_shape_dtype_range_and_do_not_touch_their_input(name, dtype):
    x = torch.rand(5, 3, 9, 11, generator=_gen(2), dtype=dtype)
    keep = x.clone()
    y = OPS[name](x, torch.rand(5, generator=_gen(3)))
    assert y.shape == x.shape and y.dtype == dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, keep)


def test_color_leaves_one_channel_images():
    x = _images((3, 1, 8, 8))
    assert torch.equal(strong.color(x, torch.tensor([0.0, 0.7, 1.0])), x)


def test_posterize_bits_per_magnitude():
    x = torch.full((5, 1, 3, 3), 255 / 255)
    y = strong.posterize(x, torch.tensor([0.0, 0.2, 0.45, 0.79, 1.0]))
    assert (y[:, 0, 0, 0] * 255).round().tolist() == [255, 254, 252, 248, 240]  # 8, 7, 6, 5, 4 bits


def test_equalize_hand_worked_lookup_table():
    x = (torch.arange(1024).view(1, 1, 32, 32) % 16).float() / 255  # 16 dark levels, 64 pixels each
    y = strong.equalize(x, torch.zeros(1))
    # step = (1024 - 64) // 255 = 3; level k -> (64 k + 1) // 3, clamped to 255
    lut = [min(255, (64 * k + 1) // 3) for k in range(16)]
    assert (y[0, 0, 0, :16] * 255).round().tolist() == lut
    # too few pixels off the top level (step 0): left as it is, as PIL does
    small = x[..., :8, :8]
    assert torch.equal(strong.equalize(small, torch.zeros(1)), small)


def test_cutout_squares_fill_and_sizes():
    n, side = 400, 20
    x = torch.zeros(n, 3, side, side)
    y = cutout(x, 0.5, _gen())
    changed = y != 0
    assert torch.equal(changed, changed[:, :1].expand_as(changed))  # every channel alike
    assert torch.all(y[changed] == 0.5)
    mask = changed[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    h, w = rows.sum(1), cols.sum(1)
    assert torch.equal(mask.sum((1, 2)), h * w)  # a filled rectangle
    assert h.max() <= 10 and w.max() <= 10
    inner = ~(rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]) & (h > 0)
    assert torch.equal(h[inner], w[inner])  # squares unless clipped by the border
    assert set(h[inner].tolist()) == set(range(1, 11))  # side = round(U(0, 10))
    clipped = ~inner & (h > 0)
    assert clipped.any()
    assert torch.equal(cutout(x, 0.0, _gen()), x)


def test_same_seed_same_views_other_seed_other_views():
    x = _images((8, 3, 16, 16))
    cta = CTAugment()
    for aug in (lambda g: rand_augment(x, g), lambda g: cta(x, g), lambda g: cta.probe(x, g)[0]):
        a, b, c = aug(_gen(5)), aug(_gen(5)), aug(_gen(6))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_rand_augment_applies_each_samples_ops_in_order():
    x = _images((32, 3, 12, 12))
    out, ops, mags = rand_augment(x, _gen(), n_ops=3, cutout_frac=0.0, return_choices=True)
    assert ops.shape == (32, 3) and mags.shape == (32, 3)
    assert ops.min() >= 0 and ops.max() < len(OPS) and mags.min() >= 0 and mags.max() <= 1
    assert len(torch.unique(mags)) == 96  # a magnitude per sample and op
    fns = list(OPS.values())
    for i in range(32):
        ref = x[i : i + 1]
        for j in range(3):
            ref = fns[ops[i, j]](ref, mags[i, j : j + 1])
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-6, rtol=0)


def test_rand_augment_draws_ops_uniformly_and_fixed_magnitude():
    x = _images((1400, 1, 4, 4))
    _, ops, mags = rand_augment(x, _gen(), magnitude=0.7, return_choices=True)
    counts = torch.bincount(ops.flatten(), minlength=len(OPS))
    assert counts.min() > 150 and counts.max() < 250  # 200 expected each
    assert torch.all(mags == 0.7)


def test_rand_augment_cutout_only_adds_a_gray_square():
    x = _images((16, 3, 16, 16))
    plain = rand_augment(x, _gen(3), cutout_frac=0.0)
    cut = rand_augment(x, _gen(3), cutout_frac=0.5)
    diff = plain != cut
    assert torch.all(cut[diff] == 0.5)
    assert diff.any()


def _naive_update(weights, ops, bins, probs, labels, decay):
    w = weights.clone().double()
    for i in range(ops.shape[0]):
        prox = 1 - 0.5 * sum(
            abs(probs[i, k].item() - float(k == labels[i].item())) for k in range(probs.shape[1])
        )
        for j in range(ops.shape[1]):
            o, b = ops[i, j].item(), bins[i, j].item()
            w[o, b] = decay * w[o, b] + (1 - decay) * prox
    return w.float()


def test_ctaugment_update_hand_worked():
    cta = CTAugment(n_bins=4)
    cta.weights[3, 1] = 0.5
    ops = torch.tensor([[3, 3], [3, 5]])
    bins = torch.tensor([[1, 1], [1, 2]])
    probs = torch.tensor([[1.0, 0.0], [0.25, 0.75]])  # proximity 1, then 1 - 0.5 * 1.5 = 0.25
    cta.update(Choices(ops, bins, torch.zeros(2, 2)), probs, torch.tensor([0, 0]))
    # (3, 1): 0.5 -> 0.99 * 0.5 + 0.01 = 0.505 -> 0.99 * 0.505 + 0.01 = 0.50995 -> 0.99 * 0.50995 + 0.0025
    expected = torch.ones(len(OPS), 4)
    expected[3, 1] = 0.5073505  # the reverse order would give 0.50749975
    expected[5, 2] = 0.99 + 0.0025
    torch.testing.assert_close(cta.weights, expected, atol=1e-7, rtol=0)


def test_ctaugment_update_equals_a_naive_loop():
    g = _gen(4)
    cta = CTAugment(n_bins=3)
    cta.weights.copy_(torch.rand(cta.weights.shape, generator=g))
    before = cta.weights.clone()
    n, k = 200, 5  # 400 updates into 42 cells: many collisions, also within a sample
    ops = torch.randint(0, len(OPS), (n, 2), generator=g)
    bins = torch.randint(0, 3, (n, 2), generator=g)
    probs = torch.softmax(3 * torch.randn(n, k, generator=g), 1)
    labels = torch.randint(0, k, (n,), generator=g)
    cta.update((ops, bins), probs, labels)
    expected = _naive_update(before, ops, bins, probs, labels, 0.99)
    torch.testing.assert_close(cta.weights, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(cta.weights, before)


def test_ctaugment_never_samples_bins_below_threshold():
    cta = CTAugment(n_bins=5)
    w = torch.rand(len(OPS), 5, generator=_gen(7)) * 0.4 + 0.6  # some below 0.8, some above
    w[2] = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.85])
    w[4] = 0.5  # all below: uniform
    cta.weights.copy_(w)
    x = _images((3000, 1, 4, 4))
    _, ch = cta(x, _gen(), return_choices=True)
    picked = cta.weights[ch.ops, ch.bins]
    ok = (picked >= 0.8) | (ch.ops == 4)
    assert ok.all()
    assert ((ch.magnitudes >= ch.bins / 5) & (ch.magnitudes <= (ch.bins + 1) / 5)).all()
    # op 2: bins 0 and 4 in proportion 0.9 : 0.85
    b2 = ch.bins[ch.ops == 2]
    assert set(b2.tolist()) == {0, 4}
    assert abs((b2 == 0).float().mean().item() - 0.9 / 1.75) < 0.1
    b4 = torch.bincount(ch.bins[ch.ops == 4], minlength=5)
    assert b4.min() > 0.5 * b4.float().mean()


def test_ctaugment_probe_bins_are_uniform_whatever_the_weights():
    cta = CTAugment()
    cta.weights.zero_()
    x = _images((2000, 1, 4, 4))
    _, ch = cta.probe(x, _gen())
    assert ch.ops.shape == (2000, 2) and ch.bins.shape == (2000, 2)
    counts = torch.bincount(ch.bins.flatten(), minlength=17).float()
    assert counts.min() > 0.7 * 4000 / 17 and counts.max() < 1.3 * 4000 / 17
    assert ((ch.magnitudes >= ch.bins / 17) & (ch.magnitudes <= (ch.bins + 1) / 17)).all()


def test_ctaugment_probe_and_views_apply_their_choices():
    x = _images((12, 3, 16, 16))
    cta = CTAugment()
    views, ch = cta.probe(x, _gen())  # no cutout on probes
    torch.testing.assert_close(views, apply_ops(x, ch.ops, ch.magnitudes), atol=0, rtol=0)
    out, ch = cta(x, _gen(1), return_choices=True)
    diff = out != apply_ops(x, ch.ops, ch.magnitudes)
    assert diff.any() and torch.all(out[diff] == 0.5)  # plus a cutout square


def test_ctaugment_weights_travel_in_the_state_dict():
    cta = CTAugment(n_bins=6)
    cta.weights.copy_(torch.rand(len(OPS), 6, generator=_gen(9)) + 0.5)
    sd = cta.state_dict()
    assert torch.equal(sd["weights"], cta.weights)
    fresh = CTAugment(n_bins=6)
    fresh.load_state_dict(sd)
    x = _images((8, 3, 8, 8))
    assert torch.equal(fresh(x, _gen(2)), cta(x, _gen(2)))
    assert not torch.equal(CTAugment(n_bins=6)(x, _gen(2)), cta(x, _gen(2)))


def test_views_are_made_at_full_precision_inside_bf16_autocast():
    x = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = strong.rand_augment(x, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = strong.rand_augment(x, torch.Generator().manual_seed(1))
        cta = strong.CTAugment()(x, torch.Generator().manual_seed(1))
    assert mixed.dtype == cta.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, atol=0, rtol=0)
