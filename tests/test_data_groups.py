"""Group ids: from sub-folders, a groups CSV and .npz arrays, kept through subset(); the group
method's multi-positive loss against a float64 loop and a case worked by hand."""

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imagefactory import make_class_folder
from replearn.data import ImageSet, load_data
from replearn.errors import ReplearnError
from replearn.losses import nt_xent
from replearn.methods import METHODS, MethodOptions


# ------------------------------------------------------------------ data
def _grouped_folder(root):
    """shoes/pair1 (2), shoes/pair2 (3), bags/bag1 (2) and one image at the top (no group)."""
    make_class_folder(root, {"shoes/pair1": 2, "shoes/pair2": 3, "bags/bag1": 2}, size=8)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "loose.png")
    return {"bags/bag1": 0, "shoes/pair1": 1, "shoes/pair2": 2}


@pytest.mark.parametrize("lazy", [False, True])
def test_groups_from_subfolders_survive_subset(tmp_path, lazy):
    ids = _grouped_folder(tmp_path)
    data = load_data(str(tmp_path), image_size=8, max_in_memory_bytes=0 if lazy else 4 << 30)
    assert data.in_memory is not lazy
    expected = [ids.get(i.rsplit("/", 1)[0], -1) for i in data.ids]
    assert data.groups.dtype == torch.long and data.groups.tolist() == expected
    assert sorted(expected) == [-1, 0, 0, 1, 1, 2, 2, 2] and data.has_groups
    part = data.subset(torch.tensor([7, 0, 3]))
    assert part.groups.tolist() == [expected[7], expected[0], expected[3]]


def test_groups_from_csv(tmp_path):
    make_class_folder(tmp_path / "imgs", {"x": 6}, size=8)
    csv = tmp_path / "groups.csv"
    csv.write_text(
        "path,group\n"
        "x/000.png,clipB\n"
        "x\\001.png,clipB\n"  # Windows separators are accepted
        "./x/002.png,clipA\n"
        "x/003.png,\n"  # empty: no group
        "x/004.png,clipA\n"
        "x/004.png,clipA\n"  # a repeated, agreeing row is fine
        "elsewhere/9.png,clipC\n"  # names no image: a warning, not an error
    )  # x/005.png is not listed: no group
    data = load_data(str(tmp_path / "imgs"), image_size=8, groups_csv=str(csv))
    assert data.ids == [f"x/{i:03d}.png" for i in range(6)]
    assert data.groups.tolist() == [1, 1, 0, -1, 0, -1]  # clipA = 0, clipB = 1 (sorted names)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("path,group\nx/000.png\n", "the row for 'x/000.png' has no group"),
        ("x/000.png,a\nx/000.png,b\n", "gives x/000.png two groups"),
        ("path,group\nnope.png,a\n", "no path in .* names an image"),
    ],
)
def test_bad_groups_csv_is_a_clear_error(tmp_path, rows, message):
    make_class_folder(tmp_path / "imgs", {"x": 2}, size=8)
    (tmp_path / "g.csv").write_text(rows)
    with pytest.raises(ReplearnError, match=message):
        load_data(str(tmp_path / "imgs"), image_size=8, groups_csv=str(tmp_path / "g.csv"))


def test_groups_csv_missing_or_not_for_a_folder(tmp_path):
    make_class_folder(tmp_path / "imgs", {"x": 2}, size=8)
    with pytest.raises(ReplearnError, match="cannot read groups file"):
        load_data(str(tmp_path / "imgs"), groups_csv=str(tmp_path / "absent.csv"))
    with pytest.raises(ReplearnError, match="groups_csv applies to image folders only"):
        load_data("digits", groups_csv=str(tmp_path / "absent.csv"))
    assert load_data("digits").groups is None  # built-ins have none


def test_groups_from_npz(tmp_path):
    images = np.zeros((5, 4, 4), np.uint8)
    np.savez(tmp_path / "a.npz", images=images, groups=np.array([7, 7, -1, 3, 7]))
    assert load_data(str(tmp_path / "a.npz")).groups.tolist() == [1, 1, -1, 0, 1]
    np.savez(tmp_path / "b.npz", images=images, groups=np.array(["s2", "s1", "s2", "", "s1"]))
    assert load_data(str(tmp_path / "b.npz")).groups.tolist() == [1, 0, 1, -1, 0]
    np.savez(tmp_path / "c.npz", images=images, groups=np.arange(4))
    with pytest.raises(ReplearnError, match="groups of shape"):
        load_data(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", images=images)
    assert load_data(str(tmp_path / "d.npz")).groups is None


def test_imageset_checks_group_length():
    with pytest.raises(ValueError, match="groups"):
        ImageSet(["a", "b"], torch.zeros(2), "t", 1, 1, torch.zeros(2, 1, 1, 1), groups=torch.zeros(3))


# ------------------------------------------------------------------ the group method
class _Identity(nn.Flatten):
    out_dim = 3


def _group_method(groups, labels=None, t=0.5):
    """The group method with identity backbone and projector: the loss sees the views as given."""
    method = METHODS.get("group")(_Identity(), MethodOptions(temperature=t, proj_hidden=4, proj_dim=3))
    method.projector = nn.Identity()
    n = len(groups) if groups is not None else len(labels)
    data = ImageSet(
        [str(i) for i in range(n)],
        torch.full((n,), -1) if labels is None else torch.tensor(labels),
        "toy", 1, 1, torch.zeros(n, 1, 1, 1, dtype=torch.uint8),
        groups=None if groups is None else torch.tensor(groups),
    )  # fmt: skip
    method.bind_data(data)
    return method


def naive_group_loss(views, gid, t):
    """Float64 loop: anchor = every view of every image; positives = every other view whose image
    has the same group (-1: its own group); mean over anchors of -mean_p log softmax."""
    z = torch.cat(views).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(views[0])
    owner = [i % n for i in range(len(z))]
    same = lambda a, b: owner[a] == owner[b] or (gid[owner[a]] >= 0 and gid[owner[a]] == gid[owner[b]])  # noqa: E731
    total = 0.0
    for a in range(len(z)):
        denom = sum(math.exp(float(z[a] @ z[b]) / t) for b in range(len(z)) if b != a)
        pos = [b for b in range(len(z)) if b != a and same(a, b)]
        total += -sum(math.log(math.exp(float(z[a] @ z[p]) / t) / denom) for p in pos) / len(pos)
    return total / len(z)


def test_two_groups_of_two_worked_by_hand():
    # images 0, 1 in group 0 embed as e1, images 2, 3 in group 1 as e2 (both views): each of the 8
    # anchors has 3 positives at s = 1 and 4 negatives at s = 0: loss = log(3 + 4 e^{-1/T})
    t = 0.5
    method = _group_method([0, 0, 1, 1], t=t)
    v = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]]).view(4, 3, 1, 1)
    loss, _ = method.training_step([v, v], torch.arange(4))
    assert abs(loss.item() - math.log(3 + 4 * math.exp(-1 / t))) < 1e-6
    assert abs(loss.item() - naive_group_loss([v.flatten(1)] * 2, [0, 0, 1, 1], t)) < 1e-6


def test_group_loss_matches_naive_loop_with_ungrouped_images():
    g = torch.Generator().manual_seed(0)
    groups = [2, 0, 2, -1, 0, 1, -1, 2]  # images 3 and 6 have no group; image 5 is alone in group 1
    method = _group_method(groups, t=0.3)
    index = torch.tensor([6, 0, 2, 7, 3, 5])  # a batch: dataset indices
    views = [torch.randn(6, 3, 1, 1, generator=g) for _ in range(2)]
    loss, logs = method.training_step(views, index)
    gid = [groups[i] for i in index.tolist()]
    assert abs(loss.item() - naive_group_loss([v.flatten(1) for v in views], gid, 0.3)) < 1e-5
    assert logs["features"].shape == (6, 3)


def test_no_groups_falls_back_to_simclr_and_says_so_once():
    with pytest.warns(UserWarning, match="falls back to instance groups") as record:
        method = _group_method(None, labels=[0, 1, 0, 1])
    assert len(record) == 1
    views = [torch.randn(4, 3, 1, 1) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning while training
        loss, _ = method.training_step(views, torch.arange(4))
    simclr = nt_xent(torch.cat(views).flatten(1), torch.arange(4).repeat(2), 0.5)
    assert abs(loss.item() - simclr.item()) < 1e-6


def test_groups_equal_to_labels_are_flagged_as_supervised():
    with pytest.warns(UserWarning, match="supervised"):
        _group_method([5, 5, 9, 9], labels=[1, 1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _group_method([0, 0, 1, 2], labels=[1, 1, 0, 0])  # finer than the classes: fine
