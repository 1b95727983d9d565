"""SwAV's Sinkhorn codes and swapped prediction, DINO's loss and centre: naive float64 loops, closed
forms and worked cases; the two methods' state (frozen prototypes, queue, teacher, centre)."""

import math

import pytest
import torch
import torch.nn.functional as F

from replearn.losses.dino import dino_loss, updated_center
from replearn.losses.swav import sinkhorn, swapped_prediction_loss
from replearn.methods import METHODS, MethodOptions
from replearn.nn.momentum import cosine_momentum
from replearn.nn.prototypes import Prototypes
from replearn.views import recipe

# -- Sinkhorn-Knopp ---------------------------------------------------------------------------------


def naive_sinkhorn(scores, eps, iters):
    """The paper's algorithm, element by element in float64: Q = exp(S / eps) (prototypes x samples),
    scaled to total 1, then per iteration rows (prototypes) to 1/K and columns (samples) to 1/B."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / eps) for i in range(b)] for j in range(k)]  # (K, B)
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            r = sum(q[j])
            q[j] = [x / r / k for x in q[j]]
        for i in range(b):
            c = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / c / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


def _cosine_scores(b, k, seed):
    g = torch.Generator().manual_seed(seed)
    z, c = F.normalize(torch.randn(b, 8, generator=g), dim=1), F.normalize(torch.randn(k, 8, generator=g), dim=1)
    return z @ c.T  # SwAV's scores: cosines in [-1, 1]


@pytest.mark.parametrize(("eps", "iters"), [(0.05, 3), (0.5, 1), (0.1, 7)])
def test_sinkhorn_matches_naive_loop(eps, iters):
    s = _cosine_scores(10, 4, seed=0)
    ref = naive_sinkhorn(s, eps, iters)
    torch.testing.assert_close(sinkhorn(s.double(), eps, iters), ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(sinkhorn(s, eps, iters).double(), ref, atol=2e-6, rtol=1e-5)


def test_sinkhorn_worked_case():
    # exp(S / eps) = [[3, 1], [1, 1]]; /6; prototypes to 1/2: [[3/8, 1/8], [1/4, 1/4]] (K x B);
    # samples to 1/2: [[3/10, 1/6], [1/5, 1/3]]; x B = 2 and transposed: the codes below
    eps = 0.1
    s = eps * torch.log(torch.tensor([[3.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(sinkhorn(s, eps, 1), torch.tensor([[3 / 5, 2 / 5], [1 / 3, 2 / 3]], dtype=torch.float64))
    # one marginal exact (each sample's code sums to 1), the other approximate: 14/15 and 16/15 vs B/K = 1


def test_sinkhorn_marginals_one_exact_one_approximate_and_convergence():
    b, k = 64, 8
    s = _cosine_scores(b, k, seed=1)
    q = sinkhorn(s, 0.05, 3)
    assert (q >= 0).all()
    # exact: the last scaling is per sample, so every sample's code sums to 1 (float32 rounding only)
    torch.testing.assert_close(q.sum(1), torch.ones(b), atol=1e-6, rtol=0)
    # approximate: after SwAV's 3 iterations each prototype's total is only near B/K = 8 (here off
    # by 2.8); the error shrinks with every iteration and vanishes in the limit
    col_err = lambda q: (q.sum(0) - b / k).abs().max().item()  # noqa: E731
    assert 1.0 < col_err(q) < 4.0
    errs = [col_err(sinkhorn(s.double(), 0.05, it)) for it in (1, 3, 10, 30, 300)]
    assert all(a > b_ for a, b_ in zip(errs, errs[1:-1], strict=False)) and errs[-1] < 1e-9, errs
    q300 = sinkhorn(s.double(), 0.05, 300)
    torch.testing.assert_close(q300.sum(1), torch.ones(b, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(q300.sum(0), torch.full((k,), b / k, dtype=torch.float64), atol=1e-9, rtol=0)


def test_sinkhorn_invariances_and_no_overflow():
    s = _cosine_scores(16, 4, seed=2)
    # a constant, or a per-prototype offset (absorbed by the first prototype scaling), changes nothing
    torch.testing.assert_close(sinkhorn(s + 3.0, 0.05, 3), sinkhorn(s, 0.05, 3))
    torch.testing.assert_close(sinkhorn(s + torch.tensor([0.0, 1.0, -2.0, 0.5]), 0.05, 3), sinkhorn(s, 0.05, 3))
    # a per-sample offset is not absorbed (it reweights the samples in the prototype totals)
    assert not torch.allclose(sinkhorn(s + torch.linspace(0, 1, 16)[:, None], 0.05, 3), sinkhorn(s, 0.05, 3))
    # scores near 1 with a small eps: exp(1 / 0.005) overflows float32 without the global max shift
    close = 0.95 + 0.05 * s
    q = sinkhorn(close, 0.005, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.double(), naive_sinkhorn(close.double() - 1, 0.005, 3), atol=1e-5, rtol=1e-4)


def test_sinkhorn_is_float32_under_bf16_input_and_takes_no_gradient():
    s = _cosine_scores(8, 4, seed=3).bfloat16().requires_grad_(True)
    q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float32 and not q.requires_grad


# -- swapped prediction -----------------------------------------------------------------------------


def naive_swapped(scores, codes, t):
    v, n, k = scores.shape
    total, pairs = 0.0, 0
    for g in range(codes.shape[0]):
        for w in range(v):
            if w == g:
                continue
            ce = 0.0
            for i in range(n):
                den = sum(math.exp(float(scores[w, i, j]) / t) for j in range(k))
                ce -= sum(float(codes[g, i, j]) * math.log(math.exp(float(scores[w, i, j]) / t) / den) for j in range(k))
            total += ce / n
            pairs += 1
    return total / pairs


def test_swapped_loss_matches_naive_loop_and_its_gradient():
    torch.manual_seed(0)
    scores = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)  # 2 large + 3 small crops
    codes = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64), -1)
    loss = swapped_prediction_loss(scores, codes, 0.1)
    assert abs(loss.item() - naive_swapped(scores.detach(), codes, 0.1)) < 1e-9
    loss.backward()
    # d/ds_w of -sum q log softmax(s_w/T) is (softmax(s_w/T) - q)/T, over the pairs and samples that use s_w
    p = torch.softmax(scores.detach() / 0.1, -1)
    want = torch.zeros_like(p)
    for g in range(2):
        for w in range(5):
            if w != g:
                want[w] += (p[w] - codes[g]) / 0.1 / 3 / 8  # N = 3 samples, 8 pairs
    torch.testing.assert_close(scores.grad, want)


def test_swapped_loss_worked_case():
    t = 0.1
    scores = torch.tensor([[[0.0, 0.0]], [[t * math.log(3.0), 0.0]]])  # crop 0: p = (1/2, 1/2); crop 1: (3/4, 1/4)
    codes = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # crop 1 predicts crop 0's code (1, 0): -log 3/4; crop 0 predicts crop 1's code (0, 1): -log 1/2
    want = (math.log(4 / 3) + math.log(2)) / 2
    assert abs(swapped_prediction_loss(scores, codes, t).item() - want) < 1e-6


def test_swapped_loss_float32_under_bf16():
    scores, codes = torch.randn(4, 3, 5).bfloat16(), torch.softmax(torch.randn(2, 3, 5), -1)
    assert swapped_prediction_loss(scores, codes).dtype == torch.float32


# -- DINO -------------------------------------------------------------------------------------------


def naive_dino(student, teacher, center, ts, tt):
    v, n, k = student.shape
    total, pairs = 0.0, 0
    for g in range(teacher.shape[0]):
        for w in range(v):
            if w == g:
                continue
            ce = 0.0
            for i in range(n):
                te = [math.exp((float(teacher[g, i, j]) - float(center[j])) / tt) for j in range(k)]
                se = [math.exp(float(student[w, i, j]) / ts) for j in range(k)]
                ce -= sum(te[j] / sum(te) * math.log(se[j] / sum(se)) for j in range(k))
            total += ce / n
            pairs += 1
    return total / pairs


@pytest.mark.parametrize(("ts", "tt"), [(0.1, 0.04), (0.1, 0.07), (1.0, 1.0)])
def test_dino_loss_matches_naive_loop(ts, tt):
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    center = 0.3 * torch.randn(5, dtype=torch.float64)
    got = dino_loss(student, teacher, center, ts, tt).item()
    assert abs(got - naive_dino(student, teacher, center, ts, tt)) < 1e-9


def test_dino_loss_closed_forms():
    k = 7
    student = torch.randn(4, 3, k)
    # a teacher equal to the centre is uniform: loss = mean of logsumexp(s/T) - mean_k(s/T) ...
    teacher = torch.randn(k).expand(2, 3, k)
    center = teacher[0, 0]
    s = student / 0.1
    want = (torch.logsumexp(s, -1) - s.mean(-1))[[1, 2, 3, 0, 2, 3]].mean()  # pairs (0,1..3), (1,0,2,3)
    assert abs(dino_loss(student, teacher, center, 0.1, 0.04).item() - want.item()) < 1e-5
    # ... which is log K for a constant student
    assert abs(dino_loss(torch.zeros(4, 3, k), teacher, center, 0.1, 0.04).item() - math.log(k)) < 1e-6
    # a sharp teacher is one-hot on its argmax: loss = -log p_student(argmax)
    teacher = torch.zeros(2, 3, k)
    teacher[..., 2] = 1.0
    want = -F.log_softmax(s, -1)[..., 2][[1, 2, 3, 0, 2, 3]].mean()
    assert abs(dino_loss(student, teacher, torch.zeros(k), 0.1, 1e-3).item() - want.item()) < 1e-5


def test_dino_loss_gradient_only_through_the_student_and_float32():
    student = torch.randn(3, 2, 4, requires_grad=True)
    teacher = torch.randn(2, 2, 4, requires_grad=True)
    loss = dino_loss(student.bfloat16(), teacher.bfloat16(), torch.zeros(4))
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad is not None and teacher.grad is None


def test_center_update_by_hand():
    center = torch.tensor([1.0, 0.0, -1.0])
    teacher = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]])  # (2, N=2, K=3)
    # batch mean over the 4 rows: (2, 2, 2); 0.9 * (1, 0, -1) + 0.1 * (2, 2, 2)
    torch.testing.assert_close(updated_center(center, teacher, 0.9), torch.tensor([1.1, 0.2, -0.7]))
    torch.testing.assert_close(updated_center(center, teacher, 0.0), torch.tensor([2.0, 2.0, 2.0]))


# -- the methods' state -----------------------------------------------------------------------------


def _tiny(name, size=12, **args):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    backbone.out_dim = 8
    method = METHODS.get(name)(backbone, MethodOptions(proj_hidden=16, proj_dim=8, args=args))
    images = torch.randint(0, 256, (6, 1, size, size), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    views = method.make_views(images, recipe("simclr-small"), size, (0.5,), (0.25,), g)
    return method, views, torch.arange(6)


@pytest.mark.parametrize("name", ["swav", "dino"])
def test_multi_crop_views_first_two_large(name):
    method, views, _ = _tiny(name, size=28, n_small=3, small_size=14)
    assert len(views) == method.n_views == 5
    assert [v.shape[-1] for v in views] == [28, 28, 14, 14, 14]


def test_convnet_takes_small_crops():
    from replearn.nn import build_backbone

    net = build_backbone("convnet", 1, 28, width=8)
    for side in (8, 12, 16, 28):
        assert net(torch.randn(2, 1, side, side)).shape == (2, 64)


def test_swav_prototypes_frozen_then_trained_and_renormalised():
    method, views, idx = _tiny("swav", n_prototypes=5, freeze_prototypes_steps=1)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    w0 = method.prototypes.weight.detach().clone()
    for step in range(2):
        method.set_progress(step, 10, 0, 1)
        loss, _ = method.training_step(views, idx)
        opt.zero_grad()
        loss.backward()
        g = method.prototypes.weight.grad
        assert g is not None and ((g.abs().sum() == 0) if step == 0 else (g.abs().sum() > 0))
        opt.step()
        method.after_step()
        if step == 0:  # zero gradient + AdamW's decay (a scaling), then renormalised: unchanged
            torch.testing.assert_close(method.prototypes.weight, w0)
    assert not torch.allclose(method.prototypes.weight, w0)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(5))


def test_swav_loss_is_the_swapped_loss_of_the_sinkhorn_codes():
    method, views, idx = _tiny("swav", n_prototypes=5)
    method.set_progress(0, 10, 0, 1)
    loss, logs = method.training_step(views, idx)
    with torch.no_grad():
        h = torch.cat([method.backbone(torch.cat(views[:2])), method.backbone(torch.cat(views[2:]))])
        scores = method.prototypes(method.projector(h)).view(len(views), 6, 5)
    codes = torch.stack([sinkhorn(scores[i], 0.05, 3) for i in range(2)])
    assert abs(loss.item() - swapped_prediction_loss(scores, codes, 0.2).item()) < 1e-5
    torch.testing.assert_close(logs["features"], h[:6])


def test_swav_queue_fills_then_joins_sinkhorn():
    method, views, idx = _tiny("swav", n_prototypes=5, queue_size=12, queue_start_epoch=1)
    method.set_progress(0, 10, 0, 2)
    method.training_step(views, idx)
    assert int(method.queues[0].filled) == 0  # before queue_start_epoch nothing is pushed
    method.set_progress(5, 10, 1, 2)
    method.training_step(views, idx)
    method.training_step(views, idx)
    assert int(method.queues[0].filled) == 12  # two batches of 6: full, used from the next step on
    past = [q.items.clone() for q in method.queues]
    loss, _ = method.training_step(views, idx)
    with torch.no_grad():
        h = torch.cat([method.backbone(torch.cat(views[:2])), method.backbone(torch.cat(views[2:]))])
        z = method.projector(h)
        scores = method.prototypes(z).view(len(views), 6, 5)
        codes = torch.stack([sinkhorn(torch.cat([method.prototypes(past[i]), scores[i]]), 0.05, 3)[-6:] for i in range(2)])
    assert abs(loss.item() - swapped_prediction_loss(scores, codes, 0.2).item()) < 1e-5
    torch.testing.assert_close(method.queues[1].items[:6], F.normalize(z[6:12], dim=1))  # pushed after use


def test_dino_teacher_center_and_temperature():
    method, views, idx = _tiny("dino", out_dim=16, momentum=0.9)
    teacher_params = list(method.teacher.parameters())
    assert all(not p.requires_grad for p in teacher_params)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method.set_progress(3, 10, 0, 1)
    with torch.no_grad():
        t = method.teacher[1](method.teacher[0](torch.cat(views[:2])))
    loss, _ = method.training_step(views, idx)
    torch.testing.assert_close(method.center, 0.1 * t.mean(0))  # from a zero centre
    # the teacher sees only the large crops: other small crops give the same centre
    c1 = method.center.clone()
    method.center.zero_()
    method.training_step(views[:2] + [v.flip(-1) for v in views[2:]], idx)
    torch.testing.assert_close(method.center, c1)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in teacher_params)
    before = [p.clone() for p in teacher_params]
    opt.step()
    method.after_step()
    m = cosine_momentum(0.9, 0.3)
    student = list(method.backbone.parameters()) + list(method.head.parameters())
    for b, s, p in zip(before, student, teacher_params, strict=True):
        torch.testing.assert_close(p, m * b + (1 - m) * s)
    assert any(not torch.equal(b, p) for b, p in zip(before, teacher_params, strict=True))
    # teacher temperature: 0.04 -> 0.06 linearly over the first 3 of 10 epochs, then flat
    for progress, want in [(0.0, 0.04), (0.15, 0.05), (0.3, 0.06), (0.9, 0.06)]:
        method.set_progress(int(progress * 100), 100, 0, 10)
        assert abs(method.teacher_temp() - want) < 1e-9


def test_prototypes_weight_norm_scores_are_cosines():
    torch.manual_seed(0)
    p = Prototypes(4, 3, weight_norm=True)
    with torch.no_grad():
        p.weight.mul_(torch.tensor([[2.0], [3.0], [0.5]]))
    x = torch.randn(5, 4)
    torch.testing.assert_close(p(x), F.normalize(x, dim=1) @ F.normalize(p.weight, dim=1).T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert p(x.bfloat16()).dtype == torch.float32
