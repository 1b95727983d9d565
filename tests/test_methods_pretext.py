"""Rotation, jigsaw and PIRL: the pretext ops against per-sample loops, the permutation set, PIRL's
loss against float64 loops, the methods' labels and memory bank, and PIRL on 2 processes."""

import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gloo import in_processes, needs_gloo
from replearn.errors import ReplearnError
from replearn.losses.pirl import pirl_nce
from replearn.methods import METHODS, MethodOptions
from replearn.methods.jigsaw import jigsaw_geometry
from replearn.nn import build_backbone
from replearn.views import pretext


def plain_view(images, size, mean, std, generator):
    """A recipe without augmentation: resize to size (nearest) and scale to [0, 1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    return nn.functional.interpolate(x, size=(size, size), mode="nearest")


# ------------------------------------------------------------------ the ops
def test_rotate_matches_rot90_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 5, 5, generator=g)
    k = torch.tensor([0, 1, 2, 3, 5, -1, 6])
    got = pretext.rotate(x, k)
    for i in range(len(x)):
        torch.testing.assert_close(got[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)), rtol=0, atol=0)


def naive_jigsaw(x, order, tile, offsets):
    cell = x.shape[-1] // 3
    out = torch.empty(len(x), 9, x.shape[1], tile, tile)
    for n in range(len(x)):
        for i in range(9):
            c = int(order[n, i])
            top = (c // 3) * cell + int(offsets[n, c, 0])
            left = (c % 3) * cell + int(offsets[n, c, 1])
            out[n, i] = x[n, :, top : top + tile, left : left + tile]
    return out


def test_jigsaw_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)  # cells of 5 px, one px row/column left over
    order = torch.stack([torch.randperm(9, generator=g) for _ in range(4)])
    offsets = pretext.tile_offsets(4, 5, 3, g, "cpu")
    assert offsets.min() == 0 and offsets.max() == 2
    torch.testing.assert_close(pretext.jigsaw(x, order, 3, offsets), naive_jigsaw(x, order, 3, offsets))
    centred = torch.ones(4, 9, 2, dtype=torch.long)
    torch.testing.assert_close(pretext.jigsaw(x, order, 3), naive_jigsaw(x, order, 3, centred))


def test_identity_jigsaw_with_whole_cells_reassembles_the_image():
    x = torch.arange(2 * 36.0).view(2, 1, 6, 6)
    tiles = pretext.jigsaw(x, torch.arange(9).repeat(2, 1), 2)  # (2, 9, 1, 2, 2)
    rows = tiles.view(2, 3, 3, 1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(2, 1, 6, 6)
    assert torch.equal(rows, x)


def hamming_min(perms):
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    return int(d[~torch.eye(len(perms), dtype=torch.bool)].min())


@pytest.mark.parametrize("p, bound", [(30, 7), (100, 6)])  # 100: the jigsaw default
def test_permutation_set_is_distinct_deterministic_and_far_apart(p, bound):
    perms = pretext.permutation_set(p, seed=0)
    assert perms.shape == (p, 9) and perms.dtype == torch.long
    assert (perms.sort(1).values == torch.arange(9)).all()  # every row is a permutation of 0..8
    assert len({tuple(r) for r in perms.tolist()}) == p
    perms[0] = 0  # callers get a copy: the cached set is untouched
    again = pretext.permutation_set(p, seed=0)
    assert torch.equal(again[1:], perms[1:]) and (again[0].sort().values == torch.arange(9)).all()
    # greedy max-min selection: a stated bound, and better than the best of 5 random sets
    g = torch.Generator().manual_seed(0)
    best_random = max(
        hamming_min(torch.stack([torch.randperm(9, generator=g) for _ in range(p)])) for _ in range(5)
    )
    assert hamming_min(again) >= bound > best_random


def test_permutation_set_depends_on_its_seed():
    assert not torch.equal(pretext.permutation_set(10, seed=0), pretext.permutation_set(10, seed=1))


# ------------------------------------------------------------------ PIRL's loss
def naive_pirl(anchor, positive, negatives, t, exclude, kind, n_data=None, z=1.0):
    """Per anchor in float64, the formulas written out (PIRL eq. 3-4; InfoNCE as a softmax)."""

    def unit(v):
        return v.double() / v.double().norm()

    def h(e):  # NCE: the posterior that a pair came from the data, not from K noise samples
        return e / (e + len(negatives) * z / n_data)

    total = 0.0
    for i in range(len(anchor)):
        a = unit(anchor[i])
        e_pos = math.exp(float(a @ unit(positive[i])) / t)
        e_neg = [math.exp(float(a @ unit(n)) / t) for j, n in enumerate(negatives) if not exclude[i, j]]
        if kind == "infonce":
            total += -math.log(e_pos / (e_pos + sum(e_neg)))
        else:
            total += -math.log(h(e_pos)) - sum(math.log(1 - h(e)) for e in e_neg)
    return total / len(anchor)


@pytest.mark.parametrize(
    "kind, t, z", [("infonce", 0.07, 1.0), ("infonce", 0.5, 1.0), ("nce", 0.5, 1.0), ("nce", 0.2, 37.0)]
)
def test_pirl_loss_matches_naive_loop(kind, t, z):
    g = torch.Generator().manual_seed(0)
    a, p, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    exclude = torch.rand(5, 9, generator=g) < 0.2
    got = pirl_nce(a, p, neg, t, exclude, kind=kind, n_data=50, z=z).item()
    assert abs(got - naive_pirl(a, p, neg, t, exclude, kind, 50, z)) < 1e-5 * max(1.0, abs(got))
    no_exclusion = torch.zeros_like(exclude)
    got = pirl_nce(a, p, neg, t, kind=kind, n_data=50, z=z).item()
    assert abs(got - naive_pirl(a, p, neg, t, no_exclusion, kind, 50, z)) < 1e-5 * max(1.0, abs(got))


def test_pirl_loss_closed_form_and_float32():
    # anchor = positive, negatives orthogonal: InfoNCE = log(1 + K e^{-1/T})
    eye = torch.eye(6)
    loss = pirl_nce(eye[:2], 3 * eye[:2], eye[2:], 0.25)
    assert abs(loss.item() - math.log(1 + 4 * math.exp(-4))) < 1e-6
    assert pirl_nce(eye[:2].bfloat16(), eye[:2].bfloat16(), eye[2:].bfloat16()).dtype == torch.float32


# ------------------------------------------------------------------ the methods
def _method(name, size=28, **args):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 1, size, width=4)
    return METHODS.get(name)(backbone, MethodOptions(proj_hidden=16, proj_dim=8, args=args))


def test_registered_with_papers():
    for name in ("rotation", "jigsaw", "pirl"):
        cls = METHODS.get(name)
        assert cls.__doc__.splitlines()[0].lower().startswith(name) and "arXiv:" in cls.paper


def test_rotation_views_are_the_four_rotations_and_the_classifier_learns():
    method = _method("rotation", size=8)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 128, (16, 1, 8, 8), dtype=torch.uint8, generator=g)
    images[:, :, :2] = 255  # a bright top band: which way is up is visible
    views = method.make_views(images, plain_view, 8, None, None, g)
    assert len(views) == 4
    for k, v in enumerate(views):
        assert torch.equal(v, torch.rot90(views[0], k, dims=(2, 3)))
    opt = torch.optim.Adam(method.parameters(), lr=0.01)
    for _ in range(40):  # labels that match the rotations are learnable; shuffled ones would not be
        loss, logs = method.training_step(views, torch.arange(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["rotation_acc"] > 0.9 and logs["features"].shape == (16, 32)


def test_jigsaw_views_follow_the_drawn_permutation():
    method = _method("jigsaw", n_permutations=10, gap_frac=0.0)
    side, cell, tile = jigsaw_geometry(28, 1.5, 0.0)
    assert (side, cell, tile) == (42, 14, 14)
    images = torch.zeros(5, 1, side, side, dtype=torch.uint8)
    for c in range(9):  # cell c holds the value 10 * (c + 1)
        r, q = divmod(c, 3)
        images[:, :, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = 10 * (c + 1)
    views = method.make_views(images, plain_view, 28, None, None, torch.Generator().manual_seed(0))
    assert len(views) == 9 and views[0].shape == (5, 1, 14, 14)
    expected = method.permutations[method._target]  # (N, 9): the cell shown at each position
    shown = torch.stack([(v[:, 0, 0, 0] * 255).round() / 10 - 1 for v in views], 1).long()
    assert torch.equal(shown, expected)
    loss, logs = method.training_step(views, torch.arange(5))
    assert math.isfinite(loss.item()) and logs["features"].shape == (5, 32)
    with pytest.raises(RuntimeError, match="make_views"):
        method.training_step(views, torch.arange(5))  # the labels were used up


def test_jigsaw_tiles_are_jittered_inside_their_cells():
    assert (
        jigsaw_geometry(28, 1.5, 0.15) == (42, 14, 12)
        and jigsaw_geometry(8, 1.5, 0.15)[2] >= pretext.MIN_TILE
    )
    method = _method("jigsaw", n_permutations=10)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    views = method.make_views(images, plain_view, 28, None, None, g)
    assert views[0].shape == (64, 1, 12, 12)
    # with offsets drawn the same way, the op gives the same tiles (jitter in 0..2 px)
    g = torch.Generator().manual_seed(1)
    x = plain_view(images, 42, None, None, g)
    target = torch.randint(0, 10, (64,), generator=g)
    offsets = pretext.tile_offsets(64, 14, 12, g, "cpu")
    assert set(offsets.unique().tolist()) == {0, 1, 2}
    torch.testing.assert_close(
        torch.stack(views, 1), naive_jigsaw(x, method.permutations[target], 12, offsets)
    )


def test_pirl_bank_ema_and_nce():
    method = _method("pirl", n_negatives=16)
    data = type("D", (), {"__len__": lambda self: 40})()
    method.bind_data(data)
    assert method.memory.bank.shape == (40, 8)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    index = torch.tensor([3, 7, 11, 19, 23, 39])
    views = method.make_views(images, plain_view, 28, None, None, torch.Generator().manual_seed(0))
    assert len(views) == 10 and views[0].shape == (6, 1, 28, 28) and views[1].shape == (6, 1, 12, 12)
    unit = lambda v: nn.functional.normalize(v.float(), dim=1)  # noqa: E731
    bank = method.memory.bank.clone()
    for step in range(2):  # m_I <- normalize(0.5 m_I + 0.5 normalize(f)), only for the batch's rows
        method.set_progress(step, 10, 0, 1)
        loss, logs = method.training_step(views, index)
        assert math.isfinite(loss.item()) and logs["features"].shape == (6, 32)
        bank[index] = unit(0.5 * bank[index] + 0.5 * unit(method._pending[1]))
        method.after_step()
        torch.testing.assert_close(method.memory.bank, bank)
    nce = _method("pirl", n_negatives=16, loss="nce")
    nce.bind_data(data)
    loss, _ = nce.training_step(views, index)
    assert math.isfinite(loss.item()) and nce.nce_z > 0
    with pytest.raises(RuntimeError, match="bind_data"):
        _method("pirl").training_step(views, index)
    with pytest.raises(ReplearnError, match="infonce or nce"):
        _method("pirl", loss="ntxent")


def test_pretext_methods_under_bf16_autocast():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    for name in ("rotation", "jigsaw", "pirl"):
        method = _method(name, **({"n_permutations": 10} if name == "jigsaw" else {}))
        method.bind_data(type("D", (), {"__len__": lambda self: 10})())
        views = method.make_views(images, plain_view, 28, None, None, torch.Generator().manual_seed(0))
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]  # as the trainer passes them
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = method.training_step(views, torch.arange(4))
        assert loss.dtype == torch.float32 and math.isfinite(loss.item()), name
        loss.backward()
        method.after_step()


# ------------------------------------------------------------------ PIRL: 2 processes x B == 1 process x 2B
B, N_DATA = 3, 12


class _Flat(nn.Sequential):
    out_dim = 6


def _pirl_bn_free():
    torch.manual_seed(0)
    backbone = _Flat(nn.Flatten(), nn.Linear(4 * 4, 6))
    method = METHODS.get("pirl")(backbone, MethodOptions(proj_dim=5, args={"n_negatives": 7}))
    method.f, method.g = nn.Linear(6, 5), nn.Linear(9 * 6, 5)  # BN-free heads
    method.bind_data(type("D", (), {"__len__": lambda self: N_DATA})())
    return method


def _pirl_data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * B, 1, 4, 4, generator=g)] + [
        torch.randn(2 * B, 1, 4, 4, generator=g) for _ in range(9)
    ]


def _pirl_steps(method, views, index, world):
    """Two steps on the same batch (the second sees the bank the first wrote): losses and grads."""
    losses, grads = [], []
    for step in range(2):
        method.set_progress(step, 10, 0, 1)
        method.zero_grad()
        loss, _ = method.training_step(views, index)
        loss.backward()
        if world > 1:  # what DDP does: average the gradients and the logged loss
            for p in method.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in method.parameters()])
        method.after_step()
    return losses, grads


def _pirl_worker(rank, world):
    method = _pirl_bn_free()
    sl = slice(rank * B, (rank + 1) * B)
    views = [v[sl] for v in _pirl_data()]
    losses, grads = _pirl_steps(method, views, torch.arange(2, 2 + 2 * B)[sl], world)
    return {"losses": losses, "grads": grads, "bank": method.memory.bank}

@needs_gloo
def test_pirl_two_processes_equal_one_process_with_double_batch():
    got = in_processes(_pirl_worker, 2)[0]
    method = _pirl_bn_free()
    losses, grads = _pirl_steps(method, _pirl_data(), torch.arange(2, 2 + 2 * B), 1)
    for step in range(2):
        assert abs(got["losses"][step] - losses[step]) < 1e-6
        for a, b in zip(got["grads"][step], grads[step], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["bank"], method.memory.bank)
