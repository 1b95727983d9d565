"""The built-in ``shapes`` data: a full factorial grid whose every factor visibly changes the image."""

import math

import numpy as np
import pytest
import torch

from replearn.data import ImageSet, data_names, load_data
from replearn.data.imageset import concat
from replearn.data.shapes import (
    FACTOR_NAMES,
    RADIUS,
    ROTATIONS,
    SCALES,
    factor_sizes,
    grid_factors,
    positions,
    render,
    render_grid,
)


@pytest.fixture(scope="module")
def train():
    return load_data("shapes", "train")


def _index(shape, scale, rot, x, y):
    return int(np.ravel_multi_index((shape, scale, rot, x, y), factor_sizes()))


def test_the_grid_is_every_combination_in_row_major_order(train):
    assert "shapes" in data_names()
    assert len(train) == 3 * 6 * 10 * 16 * 16 == 46_080
    assert train.images.shape == (46_080, 1, 32, 32) and train.images.dtype == torch.uint8
    assert train.factor_names == FACTOR_NAMES and train.factor_sizes == [3, 6, 10, 16, 16]
    want = np.stack(np.unravel_index(np.arange(46_080), factor_sizes()), 1)
    assert np.array_equal(train.factors.numpy(), want)
    assert torch.equal(train.labels, train.factors[:, 0]) and train.classes == ["square", "ellipse", "heart"]
    assert train.ids[123] == "shapes/train/000123" and len(set(train.ids)) == 46_080
    # no two combinations draw the same image: every factor value can be read off the pixels
    assert len(torch.unique(train.images.flatten(1), dim=0)) == 46_080
    x = train.images.double() / 255
    assert train.mean[0] == pytest.approx(float(x.mean()), abs=1e-9)
    assert train.std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-9)


def test_the_fast_grid_equals_drawing_each_image_on_its_own():
    f = grid_factors().numpy()
    idx = np.random.default_rng(0).choice(len(f), 500, replace=False)
    p = positions(32)
    one_by_one = render(f[idx, 0], SCALES[f[idx, 1]], ROTATIONS[f[idx, 2]], p[f[idx, 3]], p[f[idx, 4]], size=32)
    assert torch.equal(render_grid(32)[idx], one_by_one)


def _reference(shape, scale, rotation, x, y, size, k=4):
    """Naive float64 drawing of one image: every sample of the whole frame tested against the shape."""
    c = (np.arange(size * k) + 0.5) / (size * k)
    dx, dy = c[None, :] - x, c[:, None] - y
    t = math.radians(rotation)
    u = (math.cos(t) * dx + math.sin(t) * dy) / (RADIUS * scale)
    v = (math.cos(t) * dy - math.sin(t) * dx) / (RADIUS * scale)
    if shape == 0:
        hit = (np.abs(u) <= math.sqrt(0.5)) & (np.abs(v) <= math.sqrt(0.5))
    elif shape == 1:
        hit = u**2 + (2 * v) ** 2 <= 1
    else:
        hx, hy = 1.27 * u, 0.25 - 1.27 * v
        hit = (hx**2 + hy**2 - 1) ** 3 <= hx**2 * hy**3
    return np.rint(hit.reshape(size, k, size, k).mean((1, 3)) * 255)


def test_render_matches_a_naive_whole_frame_drawing():
    # off-grid values, a shape cut by the frame, and one larger than the grid's largest
    cases = [(0, 0.83, 31.7, 0.41, 0.63), (1, 0.55, 77.0, 0.7, 0.3), (2, 1.0, 12.3, 0.5, 0.5),
             (2, 0.9, 64.0, 0.03, 0.5), (0, 1.0, 45.0, 0.5, 0.97), (1, 1.6, 20.0, 0.5, 0.5),
             (2, 0.7, 5.0, -0.2, 0.5)]  # fmt: skip
    got = render(*(np.array(col) for col in zip(*cases, strict=True)), size=24).double()[:, 0]
    for image, case in zip(got, cases, strict=True):
        want = torch.from_numpy(_reference(*case, size=24))
        differ = (image - want).abs()
        assert differ.max() <= 2 * 255 / 16 and (differ > 0).float().mean() < 0.01, case  # a boundary sample may flip
    assert got[6].sum() == 0 and got[3, :, 0].sum() > 0  # wholly off the frame: black; cut by the frame: drawn to the edge


def test_the_shapes_have_their_intended_form():
    im = render([0, 1, 2, 1], [1.0] * 4, [0.0, 0.0, 0.0, 45.0], [0.5] * 4, [0.5] * 4, size=64)[:, 0].double() / 255
    radius = RADIUS * 64  # circumradius in pixels
    assert float(im[0].sum()) == pytest.approx(2 * radius**2, rel=0.02)  # square: diagonal = 2 radii
    assert float(im[1].sum()) == pytest.approx(math.pi * radius**2 / 2, rel=0.02)  # ellipse: axes 2 : 1
    rows, cols = (im[1].sum(1) > 0).sum(), (im[1].sum(0) > 0).sum()
    assert cols / rows == pytest.approx(2, rel=0.15)  # the long axis lies across at rotation 0
    ys = torch.arange(64).double()
    heart = torch.nonzero(im[2].sum(1) > 0).flatten()
    centroid = float((im[2].sum(1) * ys).sum() / im[2].sum())
    assert centroid < (heart.min() + heart.max()) / 2 - 1  # lobes up, tip down
    e = im[3]  # the ellipse turned 45 degrees clockwise runs from top left to bottom right
    yy, xx = torch.meshgrid(ys, ys, indexing="ij")
    assert float((e * (xx - 31.5) * (yy - 31.5)).sum()) > 0


def _centroid(img):
    w = img[0].double()
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]).double(), torch.arange(w.shape[1]).double(), indexing="ij")
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


def test_every_factor_changes_the_image_as_it_should(train):
    im = train.images
    for shape in range(3):
        base = (shape, 3, 2, 7, 8)
        # position moves the centre of mass right / down by the distance between the centres
        x0, _ = _centroid(im[_index(*base[:3], 0, 8)])
        x1, _ = _centroid(im[_index(*base[:3], 15, 8)])
        assert x1 - x0 == pytest.approx((positions(32)[15] - positions(32)[0]) * 32, abs=0.3)
        _, y0 = _centroid(im[_index(*base[:3], 7, 0)])
        _, y1 = _centroid(im[_index(*base[:3], 7, 15)])
        assert y1 - y0 == pytest.approx((positions(32)[15] - positions(32)[0]) * 32, abs=0.3)
        # scale grows the area about as its square
        small, big = im[_index(shape, 0, 2, 7, 8)].double().sum(), im[_index(shape, 5, 2, 7, 8)].double().sum()
        assert big / small == pytest.approx((SCALES[5] / SCALES[0]) ** 2, rel=0.2)
        # every rotation value draws a different image of the largest shape
        rotated = torch.stack([im[_index(shape, 5, r, 7, 8)] for r in range(10)]).flatten(1).int()
        assert (torch.cdist(rotated.float(), rotated.float()) + torch.eye(10) * 1e9).min() > 0
    # the three shapes differ at the same scale, rotation and place
    three = torch.stack([im[_index(s, 5, 0, 7, 8)] for s in range(3)]).flatten(1).float()
    assert (torch.cdist(three, three) + torch.eye(3) * 1e9).min() > 100


def test_shapes_stay_inside_the_frame(train):
    im = train.images
    border = torch.cat([im[..., 0, :], im[..., -1, :], im[..., :, 0], im[..., :, -1]], -1)
    assert border.max() == 0
    assert (im.flatten(1).max(1).values > 200).all()  # and every image shows its shape
    assert (im[train.factors[:, 1] == 0].flatten(1).double().sum(1) / 255 > 20).all()  # the smallest cover 20+ px


def test_test_split_is_off_grid_with_nearest_grid_factors(train):
    test = load_data("shapes", "test")
    assert len(test) == 5000 and test.factors.shape == (5000, 5)
    for j, size in enumerate(factor_sizes()):
        assert test.factors[:, j].min() >= 0 and test.factors[:, j].max() < size
        assert len(test.factors[:, j].unique()) == size  # values spread over the whole range
    nearest = train.images[torch.as_tensor(np.ravel_multi_index(test.factors.T.numpy(), factor_sizes()))]
    same = (nearest == test.images).flatten(1).all(1)
    assert same.float().mean() < 0.05  # continuous values: almost never a copy of the grid image
    close = (nearest.double() - test.images.double()).abs().mean((1, 2, 3))
    far = (train.images[torch.randperm(46_080, generator=torch.Generator().manual_seed(0))[:5000]].double()
           - test.images.double()).abs().mean((1, 2, 3))
    assert close.mean() < far.mean() / 3  # yet the nearest grid factors describe the image
    assert (test.labels == test.factors[:, 0]).all()
    assert test.mean == train.mean  # normalised by the training images' statistics
    both = load_data("shapes", "all")
    assert len(both) == 51_080 and len(set(both.ids)) == 51_080
    assert torch.equal(both.images[46_080:], test.images) and torch.equal(both.factors[:46_080], train.factors)


def test_subset_and_concat_carry_the_factors(train):
    sub = train.subset(torch.tensor([5, 46_079]))
    assert torch.equal(sub.factors, train.factors[[5, 46_079]]) and sub.factor_names == FACTOR_NAMES
    assert sub.factor_sizes == factor_sizes()
    both = concat(sub, sub)
    assert torch.equal(both.factors, train.factors[[5, 46_079, 5, 46_079]]) and both.factor_names == FACTOR_NAMES
    other = ImageSet(ids=["a", "b"], labels=torch.zeros(2, dtype=torch.long), name="x", channels=1, size=32,
                     images=torch.zeros(2, 1, 32, 32, dtype=torch.uint8), factors=torch.zeros(2, 5, dtype=torch.long),
                     factor_names=["a", "b", "c", "d", "e"], factor_sizes=[2] * 5)
    plain = ImageSet(ids=["c"], labels=torch.zeros(1, dtype=torch.long), name="y", channels=1, size=32,
                     images=torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    for mixed in (concat(sub, other), concat(other, sub), concat(sub, plain), concat(plain, sub)):
        assert mixed.factors is None and mixed.factor_names is None and mixed.factor_sizes is None


def test_factor_fields_are_checked():
    def make(**kw):
        return ImageSet(ids=["a"], labels=torch.zeros(1, dtype=torch.long), name="x", channels=1, size=4,
                        images=torch.zeros(1, 1, 4, 4, dtype=torch.uint8), **kw)

    with pytest.raises(ValueError, match="one row per image"):
        make(factors=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="factor_names"):
        make(factors=torch.zeros(1, 2, dtype=torch.long), factor_names=["a"])
    with pytest.raises(ValueError, match="factor_sizes"):
        make(factors=torch.zeros(1, 2, dtype=torch.long), factor_sizes=[3])
    with pytest.raises(ValueError, match="outside"):
        make(factors=torch.tensor([[0, 3]]), factor_sizes=[3, 3])
    with pytest.raises(ValueError, match="without factors"):
        make(factor_names=["a"])


def test_load_data_renders_natively_at_the_size_asked():
    big = load_data("shapes", image_size=64)
    assert big.images.shape == (46_080, 1, 64, 64) and big.size == 64
    idx = [0, 12_345, 46_079]
    f = big.factors[idx].numpy()
    p = positions(64)
    drawn = render(f[:, 0], SCALES[f[:, 1]], ROTATIONS[f[:, 2]], p[f[:, 3]], p[f[:, 4]], size=64)
    assert torch.equal(big.images[idx], drawn)  # drawn at 64 px, not resized from 32
    assert big.images[..., 0, :].max() == 0 and big.images[..., :, -1].max() == 0
