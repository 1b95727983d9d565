"""The built-in ``shapes`` data: a full factorial grid whose every factor visibly changes the image."""

import numpy as np
import pytest
import torch

from replearn.data import load_data
from replearn.data.imageset import concat
from replearn.data.shapes import (
    FACTOR_NAMES,
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
    assert len(train) == 3 * 6 * 10 * 16 * 16 == 46_080
    assert train.images.shape == (46_080, 1, 32, 32) and train.images.dtype == torch.uint8
    assert train.factor_names == FACTOR_NAMES and train.factor_sizes == [3, 6, 10, 16, 16]
    want = np.stack(np.unravel_index(np.arange(46_080), factor_sizes()), 1)
    assert np.array_equal(train.factors.numpy(), want)
    assert torch.equal(train.labels, train.factors[:, 0]) and train.classes == ["square", "ellipse", "heart"]


def test_the_fast_grid_equals_drawing_each_image_on_its_own():
    f = grid_factors().numpy()
    idx = np.random.default_rng(0).choice(len(f), 500, replace=False)
    p = positions(32)
    one_by_one = render(f[idx, 0], SCALES[f[idx, 1]], ROTATIONS[f[idx, 2]], p[f[idx, 3]], p[f[idx, 4]], size=32)
    assert torch.equal(render_grid(32)[idx], one_by_one)


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


def test_test_split_is_off_grid_with_nearest_grid_factors(train):
    test = load_data("shapes", "test")
    assert len(test) == 5000 and test.factors.shape == (5000, 5)
    for j, size in enumerate(factor_sizes()):
        assert test.factors[:, j].min() >= 0 and test.factors[:, j].max() < size
    nearest = train.images[torch.as_tensor(np.ravel_multi_index(test.factors.T.numpy(), factor_sizes()))]
    same = (nearest == test.images).flatten(1).all(1)
    assert same.float().mean() < 0.05  # continuous values: almost never a copy of the grid image
    assert (test.labels == test.factors[:, 0]).all()
    assert test.mean == train.mean  # normalised by the training images' statistics


def test_subset_concat_and_size_carry_the_factors(train):
    sub = train.subset(torch.tensor([5, 46_079]))
    assert torch.equal(sub.factors, train.factors[[5, 46_079]]) and sub.factor_names == FACTOR_NAMES
    both = concat(sub, sub)
    assert both.factors.shape == (4, 5)
    digits = load_data("digits", "train")
    assert concat(digits, digits).factors is None
    big = load_data("shapes", "test", image_size=64)
    assert big.images.shape == (5000, 1, 64, 64) and big.size == 64  # drawn at 64 px, not resized
    with pytest.raises(ValueError, match="one row per image"):
        type(train)(ids=["a"], labels=torch.zeros(1, dtype=torch.long), name="x", channels=1, size=4,
                    images=torch.zeros(1, 1, 4, 4, dtype=torch.uint8), factors=torch.zeros(2, 5, dtype=torch.long))
