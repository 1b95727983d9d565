"""Barlow Twins, VICReg and CPC's InfoNCE against naive float64 loops and closed forms; CPC's context
network is causal over rows; CPC's patch grid and BN handling."""

import math

import pytest
import torch

from replearn.losses.cpc import cpc_info_nce
from replearn.losses.redundancy import barlow_twins_loss, vicreg_loss, vicreg_terms
from replearn.methods import METHODS, MethodOptions
from replearn.methods.cpc import RowCausalContext, bn_running_stats_frozen, cut_patches
from replearn.nn import build_backbone
from replearn.views import recipe


def _hadamard(n):
    """Sylvester's Hadamard matrix: +-1 entries, orthogonal columns, all but the first zero-mean."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


# -- Barlow Twins -------------------------------------------------------------------------------
def naive_barlow(z1, z2, lambd, eps=1e-5):
    z1, z2 = z1.double().tolist(), z2.double().tolist()
    n, d = len(z1), len(z1[0])

    def standardise(z):
        cols = []
        for j in range(d):
            col = [z[b][j] for b in range(n)]
            m = sum(col) / n
            s = math.sqrt(sum((v - m) ** 2 for v in col) / n + eps)
            cols.append([(v - m) / s for v in col])
        return cols

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][s] * b[j][s] for s in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


@pytest.mark.parametrize("lambd", [5e-3, 0.1, 1.0])
def test_barlow_matches_naive_loop(lambd):
    torch.manual_seed(0)
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    z2 = z2 + z1  # correlated views
    assert abs(barlow_twins_loss(z1, z2, lambd).item() - naive_barlow(z1, z2, lambd)) < 1e-4


def test_barlow_gradient_matches_float64_reference():
    torch.manual_seed(1)
    z1 = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    barlow_twins_loss(z1, z2, 0.05).backward()
    r1, r2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    bn = torch.nn.BatchNorm1d(5, affine=False, dtype=torch.float64)  # the paper's pseudo-code: bn(z)
    c = bn(r1).T @ bn(r2) / 9
    eye = torch.eye(5, dtype=torch.bool)
    ((1 - c[eye]).pow(2).sum() + 0.05 * c[~eye].pow(2).sum()).backward()
    torch.testing.assert_close(z1.grad, r1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(z2.grad, r2.grad, atol=1e-5, rtol=1e-4)


def test_barlow_closed_forms():
    z = _hadamard(8)[:, 1:5]  # zero-mean, unit-variance, uncorrelated columns: C = I
    assert barlow_twins_loss(z, z, 5e-3).item() < 1e-6
    assert abs(barlow_twins_loss(z, -z, 5e-3).item() - 4 * 4) < 1e-3  # C = -I: D * (1 - -1)^2
    same = _hadamard(8)[:, 1:2].repeat(1, 4)  # four copies of one feature: C = all ones
    assert abs(barlow_twins_loss(same, same, 0.1).item() - 0.1 * 4 * 3) < 1e-4


def test_barlow_invariant_to_per_dimension_affine_maps_and_float32():
    torch.manual_seed(2)
    z1, z2 = torch.randn(16, 4), torch.randn(16, 4)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 10.0]), torch.randn(4)
    ref = barlow_twins_loss(z1, z2)
    assert abs(barlow_twins_loss(z1 * scale + shift, z2 * scale.flip(0) - shift).item() - ref.item()) < 1e-4
    assert barlow_twins_loss(z1.bfloat16(), z2.bfloat16()).dtype == torch.float32


# -- VICReg -------------------------------------------------------------------------------------
def naive_vicreg(z1, z2, sim_w=25.0, var_w=25.0, cov_w=1.0, gamma=1.0, eps=1e-4):
    z1, z2 = z1.double().tolist(), z2.double().tolist()
    n, d = len(z1), len(z1[0])
    inv = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        means = [sum(z[b][j] for b in range(n)) / n for j in range(d)]
        for i in range(d):
            std = math.sqrt(sum((z[b][i] - means[i]) ** 2 for b in range(n)) / (n - 1) + eps)
            var += max(0.0, gamma - std) / d / 2
            for j in range(d):
                if i != j:
                    c = sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n)) / (n - 1)
                    cov += c**2 / d
    return sim_w * inv + var_w * var + cov_w * cov


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])  # below, around and above the variance target
def test_vicreg_matches_naive_loop(scale):
    torch.manual_seed(3)
    z1 = torch.randn(12, 5) * scale
    z2 = z1 + 0.5 * torch.randn(12, 5) * scale
    assert abs(vicreg_loss(z1, z2).item() - naive_vicreg(z1, z2)) < 1e-4 * max(1.0, naive_vicreg(z1, z2))
    got = vicreg_loss(z1, z2, sim_w=1.0, var_w=2.0, cov_w=3.0).item()
    assert abs(got - naive_vicreg(z1, z2, 1.0, 2.0, 3.0)) < 1e-4 * max(1.0, got)


def test_vicreg_worked_cases():
    const = torch.full((6, 3), 0.7)
    inv, var, cov = vicreg_terms(const, const)
    # constant embeddings: no spread, so every dimension's hinge is 1 - sqrt(eps) = 0.99
    assert inv.item() == 0 and abs(var.item() - 0.99) < 1e-6 and cov.item() == 0
    assert abs(vicreg_loss(const, const).item() - 25 * 0.99) < 1e-5
    z = 2 * _hadamard(8)[:, 1:5]  # std 2*sqrt(8/7) > 1 and uncorrelated: every term 0
    assert vicreg_loss(z, z).item() < 1e-6
    assert abs(vicreg_loss(z, z + 1).item() - 25 * 1.0) < 1e-5  # a shift of 1: MSE 1
    same = _hadamard(8)[:, 1:2].repeat(1, 3)  # 3 copies: cov_ij = 8/7 for i != j, per branch 6 (8/7)^2 / 3
    _, _, cov = vicreg_terms(same, same)
    assert abs(cov.item() - 2 * 6 * (8 / 7) ** 2 / 3) < 1e-5


# -- CPC's InfoNCE ------------------------------------------------------------------------------
def naive_cpc(pred, target, t):
    """Each prediction against the same position in every image and every other patch of its image."""
    pred = pred.double() / pred.double().norm(dim=-1, keepdim=True)
    target = target.double() / target.double().norm(dim=-1, keepdim=True)
    n, p, _ = pred.shape
    total = 0.0
    for i in range(n):
        for j in range(p):
            cands = [(m, j) for m in range(n)] + [(i, q) for q in range(p) if q != j]
            scores = [math.exp(float(pred[i, j] @ target[c]) / t) for c in cands]
            total += -math.log(math.exp(float(pred[i, j] @ target[i, j]) / t) / sum(scores))
    return total / (n * p)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_cpc_info_nce_matches_naive_loop(t):
    torch.manual_seed(4)
    pred, target = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    assert abs(cpc_info_nce(pred, target, t).item() - naive_cpc(pred, target, t)) < 1e-5


def test_cpc_info_nce_closed_forms():
    n, p, t = 3, 4, 0.25
    eye = torch.eye(n * p).view(n, p, n * p)  # perfect predictions, every target orthogonal to the others
    expected = math.log(1 + (n + p - 2) * math.exp(-1 / t))  # N + P - 1 candidates, one positive
    assert abs(cpc_info_nce(3 * eye, eye, t).item() - expected) < 1e-5
    same = torch.ones(n, p, 4)  # all targets alike: chance among N + P - 1
    assert abs(cpc_info_nce(torch.randn(n, p, 4), same, t).item() - math.log(n + p - 1)) < 1e-5
    assert cpc_info_nce(eye.bfloat16(), eye.bfloat16(), t).dtype == torch.float32


# -- CPC's context network, patch grid and BN statistics -----------------------------------------
@pytest.mark.parametrize("blocks", [1, 3])
def test_context_for_row_r_never_sees_the_rows_below(blocks):
    torch.manual_seed(5)
    net = RowCausalContext(dim=6, hidden=8, blocks=blocks)
    z = torch.randn(2, 6, 5, 5)
    for r in range(4):
        changed = z.clone()
        changed[:, :, r + 1 :] = torch.randn(2, 6, 4 - r, 5)
        a, b = net(z), net(changed)
        torch.testing.assert_close(a[:, :, : r + 1], b[:, :, : r + 1], atol=0, rtol=0)
        assert not torch.allclose(a[:, :, r + 1], b[:, :, r + 1])  # row r+1 does see itself


def test_patch_grid_covers_28px_images_5x5():
    method = METHODS.get("cpc")(build_backbone("convnet", 1, 28, width=4), MethodOptions())
    assert method.geometry(28) == (12, 4, 28)
    x = torch.randn(2, 1, 28, 28)
    patches = cut_patches(x, 12, 4).view(2, 5, 5, 1, 12, 12)
    torch.testing.assert_close(patches[1, 3, 2], x[1, :, 12:24, 8:20])
    torch.testing.assert_close(patches[0, 4, 4], x[0, :, 16:28, 16:28])


def test_cpc_bn_running_stats_come_from_whole_images():
    torch.manual_seed(6)
    method = METHODS.get("cpc")(build_backbone("convnet", 1, 28, width=4), MethodOptions())
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    views = method.make_views(images, recipe("simclr-small"), 28, (0.3,), (0.3,), g)
    assert views[0].shape == (8, 1, 28, 28) and views[1].shape == (8 * 25, 1, 12, 12)
    reference = build_backbone("convnet", 1, 28, width=4)
    reference.load_state_dict(method.backbone.state_dict())
    loss, logs = method.training_step(views, torch.arange(8))
    assert math.isfinite(loss.item())
    with torch.no_grad():
        h = reference(views[0])  # whole images alone
    torch.testing.assert_close(logs["features"], h)
    ref = dict(reference.named_buffers())
    for name, buf in method.backbone.named_buffers():
        if "running" in name:  # num_batches_tracked counts both passes, which momentum ignores
            torch.testing.assert_close(buf, ref[name])
    bn = torch.nn.BatchNorm1d(3)
    with bn_running_stats_frozen(bn):
        out = bn(torch.randn(5, 3) * 4 + 2)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and abs(out.mean().item()) < 1e-5  # batch stats used
    assert bn.momentum == 0.1
