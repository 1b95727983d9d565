"""MoCo, BYOL, SimSiam: their losses against float64 references and closed forms, their momentum
networks and queue, and SimSiam's collapse without the stop-gradient."""

import csv
import math

import pytest
import torch

from replearn.errors import ReplearnError
from replearn.losses.infonce import infonce_queue
from replearn.losses.similarity import negative_cosine, normalized_mse, symmetric
from replearn.methods import METHODS, MethodOptions
from replearn.nn import build_backbone
from replearn.train.run import pretrain


# ------------------------------------------------------------------ InfoNCE with a queue
def naive_infonce_queue(q, k, queue, t):
    """The definition, one query at a time, in float64."""
    unit = [v / v.norm() for v in q.double()], [v / v.norm() for v in k.double()]
    neg = [v / v.norm() for v in queue.double()]
    total = 0.0
    for qi, ki in zip(*unit, strict=True):
        pos = math.exp(float(qi @ ki) / t)
        total += -math.log(pos / (pos + sum(math.exp(float(qi @ n) / t) for n in neg)))
    return total / len(q)


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_infonce_queue_matches_naive_loop(t):
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.randn(n, 5, generator=g) for n in (6, 6, 11))
    assert abs(infonce_queue(q, k, queue, t).item() - naive_infonce_queue(q, k, queue, t)) < 1e-5


def test_infonce_queue_orthogonal_negatives_closed_form():
    # q = k and every queued key orthogonal to every query: log(1 + K exp(-1/T))
    n, k_neg, t = 3, 5, 0.2
    eye = torch.eye(n + k_neg)
    q, queue = eye[:n], eye[n:]
    loss = infonce_queue(q, 2 * q, queue, t)  # the positive's scale must not matter
    assert abs(loss.item() - math.log(1 + k_neg * math.exp(-1 / t))) < 1e-6


def test_infonce_queue_all_keys_equal_gives_log_1_plus_k():
    q = torch.randn(4, 8)
    k = q[:1].expand(4, 8)
    queue = q[:1].expand(7, 8) * 3
    q = q[:1].expand(4, 8)  # every logit equal: -log(1 / (1 + K))
    assert abs(infonce_queue(q, k, queue, 0.3).item() - math.log(8)) < 1e-6


def test_infonce_queue_float32_under_bf16_inputs():
    q, k, queue = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16(), torch.randn(16, 8).bfloat16()
    assert infonce_queue(q, k, queue).dtype == torch.float32


# ------------------------------------------------------------------ BYOL / SimSiam similarity
def naive_cosines(p, z):
    pairs = zip(p.double(), z.double(), strict=True)
    return [float(a @ b) / (float(a.norm()) * float(b.norm())) for a, b in pairs]


def test_similarity_losses_match_naive_loop():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)
    cos = naive_cosines(p, z)
    assert abs(negative_cosine(p, z).item() - (-sum(cos) / len(cos))) < 1e-6
    assert abs(normalized_mse(p, z).item() - sum(2 - 2 * c for c in cos) / len(cos)) < 1e-6


def test_similarity_closed_forms():
    z = torch.randn(5, 4)
    assert abs(normalized_mse(3 * z, z).item()) < 1e-6  # perfect prediction (any scale)
    assert abs(negative_cosine(3 * z, z).item() + 1) < 1e-6
    assert abs(normalized_mse(-z, z).item() - 4) < 1e-5  # opposite
    eye = torch.eye(4)
    assert abs(normalized_mse(eye[:2], eye[2:]).item() - 2) < 1e-6  # orthogonal
    assert abs(negative_cosine(eye[:2], eye[2:]).item()) < 1e-6


def test_similarity_hand_worked_2d():
    # cos((1,0),(1,1)) = 1/sqrt(2); cos((3,4),(4,3)) = 24/25
    p, z = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    assert abs(negative_cosine(p, z).item() - (-(1 / math.sqrt(2) + 24 / 25) / 2)) < 1e-6
    assert abs(normalized_mse(p, z).item() - ((2 - math.sqrt(2)) + 2 / 25) / 2) < 1e-6


def test_symmetric_pairs_each_prediction_with_the_other_views_target():
    eye = torch.eye(4)
    p1, p2, z1, z2 = eye[:2], eye[2:], eye[2:], eye[2:]  # p1 orthogonal to z2, p2 equal to z1
    assert abs(symmetric(normalized_mse, p1, p2, z1, z2).item() - 1.0) < 1e-6  # (2 + 0) / 2
    assert abs(symmetric(negative_cosine, p1, p2, z1, z2).item() + 0.5) < 1e-6  # (0 - 1) / 2


# ------------------------------------------------------------------ methods
def _method(name, **args):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 1, 8, width=4)
    return METHODS.get(name)(backbone, MethodOptions(proj_hidden=32, proj_dim=16, args=args))


def _views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g) for _ in range(2)], torch.arange(n)


def _ema_step(method, online, target, m):
    """One optimiser step then after_step; checks target <- m * target + (1 - m) * online exactly."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    loss, logs = method.training_step(*_views())
    loss.backward()
    assert all(p.grad is None for p in target.parameters())  # the momentum network takes no gradient
    assert all(p.grad is not None for p in online.parameters())
    opt.step()
    before = [p.detach().clone() for p in target.parameters()]
    method.after_step()
    moved = False
    for t_old, t_new, o in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * o.detach())
        moved |= not torch.equal(t_old, t_new)
    assert moved
    return loss, logs


def test_moco_key_encoder_is_frozen_moves_by_ema_and_queue_gets_keys():
    method = _method("moco", queue_size=40, momentum=0.9)
    assert len(method.queue) == 40 and not any(p.requires_grad for p in method.key_backbone.parameters())
    views, index = _views()
    with torch.no_grad():  # the keys training_step will push (train-mode BN: batch statistics)
        keys = method.key_projector(method.key_backbone(torch.cat(views)))
        k1, k2 = torch.nn.functional.normalize(keys, dim=1).chunk(2)
    loss, logs = _ema_step(method, method.backbone, method.key_backbone, 0.9)
    torch.testing.assert_close(method.queue.items[:16], torch.cat([k1, k2]))
    assert int(method.queue.ptr) == 16 and int(method.queue.filled) == 16
    assert logs["features"].shape == (8, method.backbone.out_dim)
    for k, o in zip(method.key_projector.parameters(), method.projector.parameters(), strict=True):
        assert not torch.equal(k, o)  # the head's copy follows only part-way


def test_moco_loss_is_the_symmetric_infonce_over_the_queue():
    method = _method("moco", queue_size=12)
    queue = method.queue.items.clone()
    views, index = _views()
    with torch.no_grad():
        q1, q2 = method.projector(method.backbone(torch.cat(views))).chunk(2)
        k1, k2 = method.key_projector(method.key_backbone(torch.cat(views))).chunk(2)
        want = (naive_infonce_queue(q1, k2, queue, 0.2) + naive_infonce_queue(q2, k1, queue, 0.2)) / 2
        loss, _ = method.training_step(views, index)
    assert abs(loss.item() - want) < 1e-5


def test_byol_target_is_frozen_and_follows_the_cosine_momentum():
    method = _method("byol", base_momentum=0.9)
    method.set_progress(0, 10, 0, 1)
    assert abs(method.momentum - 0.9) < 1e-12
    _ema_step(method, method.projector, method.target_projector, 0.9)
    method.set_progress(5, 10, 0, 1)  # halfway: 1 - 0.1 * (cos(pi / 2) + 1) / 2 = 0.95
    assert abs(method.momentum - 0.95) < 1e-12
    _ema_step(method, method.backbone, method.target_backbone, 0.95)
    method.set_progress(10, 10, 0, 1)
    assert method.momentum == 1.0


def test_simsiam_heads_follow_the_paper():
    method = _method("simsiam")
    last_bn = method.projector[-1]
    assert isinstance(last_bn, torch.nn.BatchNorm1d) and not last_bn.affine
    assert method.predictor[0].out_features == 4  # bottleneck: proj_dim // 4
    z = torch.randn(8, 16, requires_grad=True)
    method.projector = torch.nn.Identity()  # the stop-gradient: z's gradient comes only through p
    method.backbone = torch.nn.Identity()
    loss, _ = method.training_step([z[:4], z[4:]], torch.arange(4))
    p1, p2 = method.predictor(z).chunk(2)
    ref = symmetric(negative_cosine, p1, p2, *z.detach().chunk(2))
    g, g_ref = torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0]
    torch.testing.assert_close(g, g_ref)


# ------------------------------------------------------------------ SimSiam without its stop-gradient
COLLAPSE = dict(
    data="digits", method="simsiam", backbone="convnet", width=8, batch_size=64, limit=512, knn_monitor=False,
    precision="32", epochs=6, lr=0.2,
)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second thread, which on a busy 2-core machine only waits
    (this test: 22 s with 2 threads, 6 s with 1, measured there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _last_epoch(run):
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("loss_epoch")]
    return float(rows[-1]["loss_epoch"]), float(rows[-1]["feature_spread"])


def test_collapse_alarm_stops_simsiam_without_its_stop_gradient(tmp_path, monkeypatch, one_thread):
    """Without the stop-gradient SimSiam falls into the trivial solution (the paper's Fig. 2): the
    predictor's outputs of all images become one point, and the alarm, which watches the vectors the
    loss compares as well as the backbone features, stops the run with a clear message. With the
    stop-gradient the same settings train on."""
    from replearn.methods.simsiam import SimSiam

    run = pretrain(out=str(tmp_path / "with"), **COLLAPSE)
    loss_sg, spread_sg = _last_epoch(run)
    assert loss_sg > -0.7  # far from the trivial -1
    # the alarm (threshold 0.05) stayed quiet: the predictor's spread here went 0.52 -> 0.09 with the
    # stop-gradient, and 0.37 -> 0.02 without it (measured on this test's settings)
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("embedding_spread")]
    assert len(rows) == COLLAPSE["epochs"] and min(float(r["embedding_spread"]) for r in rows) > 0.05
    monkeypatch.setattr(SimSiam, "stop_gradient", False)
    with pytest.raises(ReplearnError, match=r"collapsed in epoch \d+: the embeddings the loss compares"):
        pretrain(out=str(tmp_path / "without"), **COLLAPSE)
