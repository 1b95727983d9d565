"""NT-Xent against a naive float64 loop and its closed forms."""

import math

import pytest
import torch

from replearn.losses import nt_xent


def naive_nt_xent(z, idx, t):
    """Loop over anchors and pairs in float64: the definition, written out."""
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z)
    total, anchors = 0.0, 0
    for i in range(n):
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        pos = [p for p in range(n) if p != i and idx[p] == idx[i]]
        if not pos:
            continue
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_matches_naive_loop_simclr_pairs(t):
    torch.manual_seed(0)
    z = torch.randn(12, 5, dtype=torch.float64)
    idx = torch.arange(6).repeat(2)
    assert abs(nt_xent(z, idx, t).item() - naive_nt_xent(z, idx, t)) < 1e-6


def test_matches_naive_loop_with_label_positives_and_lonely_anchors():
    torch.manual_seed(1)
    z = torch.randn(10, 4)
    idx = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # class 2 has no positive: not an anchor
    assert abs(nt_xent(z, idx, 0.3).item() - naive_nt_xent(z, idx, 0.3)) < 1e-6


def test_gradient_matches_float64_reference():
    torch.manual_seed(2)
    z = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(4).repeat(2)
    nt_xent(z, idx, 0.2).backward()
    ref_z = z.detach().clone().requires_grad_(True)
    zn = ref_z / ref_z.norm(dim=1, keepdim=True)
    sim = zn @ zn.T / 0.2
    eye = torch.eye(8, dtype=torch.bool)
    logp = sim.masked_fill(eye, -torch.inf).log_softmax(1)
    partner = (torch.arange(8) + 4) % 8
    (-logp[torch.arange(8), partner].mean()).backward()
    torch.testing.assert_close(z.grad, ref_z.grad.float().double(), atol=1e-6, rtol=1e-5)


def test_identical_embeddings_give_log_2n_minus_1():
    n = 7
    z = torch.ones(2 * n, 16)
    loss = nt_xent(z, torch.arange(n).repeat(2), temperature=0.5)
    assert abs(loss.item() - math.log(2 * n - 1)) < 1e-6


def test_orthogonal_negatives_closed_form():
    # positives identical, every other pair orthogonal: loss = log(1 + (2N-2) exp(-1/T))
    n, t = 4, 0.25
    base = torch.eye(n)
    z = torch.cat([base, base])
    loss = nt_xent(z, torch.arange(n).repeat(2), t)
    assert abs(loss.item() - math.log(1 + (2 * n - 2) * math.exp(-1 / t))) < 1e-6


def test_scale_invariant_and_float32_under_bf16_inputs():
    torch.manual_seed(3)
    z = torch.randn(6, 8)
    idx = torch.arange(3).repeat(2)
    assert abs(nt_xent(z, idx).item() - nt_xent(5 * z, idx).item()) < 1e-5
    assert nt_xent(z.bfloat16(), idx).dtype == torch.float32


@pytest.mark.parametrize("chunk", [1, 3, 10])
def test_anchor_blocks_give_the_naive_loss_and_the_autograd_gradient(chunk):
    # blocks of 1, 3 (the last one short) and all 10 anchors; label positives and a lonely anchor
    torch.manual_seed(4)
    z = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    loss = nt_xent(z, idx, 0.3, chunk=chunk)
    assert abs(loss.item() - naive_nt_xent(z.detach(), idx, 0.3)) < 1e-6
    loss.backward()
    # the gradient of the definition through plain autograd, in float64
    ref = z.detach().clone().requires_grad_(True)
    zn = ref / ref.norm(dim=1, keepdim=True)
    logp = (zn @ zn.T / 0.3).masked_fill(torch.eye(10, dtype=torch.bool), -torch.inf).log_softmax(1)
    pos = (idx[:, None] == idx[None, :]) & ~torch.eye(10, dtype=torch.bool)
    has = pos.any(1)
    (-(logp.masked_fill(~pos, 0).sum(1)[has] / pos.sum(1)[has]).mean()).backward()
    torch.testing.assert_close(z.grad, ref.grad, atol=1e-6, rtol=1e-5)


def test_float32_logits_under_autocast():
    # the loss ignores a bf16 autocast around it: the same value and gradient as without
    torch.manual_seed(5)
    z = torch.randn(16, 8, requires_grad=True)
    idx = torch.arange(8).repeat(2)
    plain = nt_xent(z, idx, 0.2)
    (g_plain,) = torch.autograd.grad(plain, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nt_xent(z, idx, 0.2)
    (g_mixed,) = torch.autograd.grad(mixed, z)
    assert mixed.item() == plain.item()
    torch.testing.assert_close(g_mixed, g_plain, atol=0, rtol=0)
