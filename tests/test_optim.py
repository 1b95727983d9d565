"""LARS against a step worked out by hand in float64."""

import pytest
import torch

from replearn.train.optim import LARS


def test_lars_step_matches_hand_computation():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)  # ||w|| = 5
    b = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)  # excluded: plain SGD
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, eta=0.02)
    g_w, g_b = torch.tensor([0.6, -0.8], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    for _ in range(2):
        w.grad, b.grad = g_w.clone(), g_b.clone()
        opt.step()
    # by hand: d = g + wd * w; trust = eta * ||w|| / ||d||; buf = 0.9 * buf + trust * d; w -= lr * buf
    w0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    d0 = g_w + 0.1 * w0  # (0.9, -0.4)
    u0 = 0.02 * w0.norm() / d0.norm() * d0
    w1 = w0 - 0.5 * u0
    d1 = g_w + 0.1 * w1
    u1 = 0.9 * u0 + 0.02 * w1.norm() / d1.norm() * d1
    w2 = w1 - 0.5 * u1
    torch.testing.assert_close(w.detach(), w2, atol=1e-12, rtol=0)
    # the excluded bias: SGD with momentum, no trust ratio: 1 - 0.5 * 2 - 0.5 * (0.9 * 2 + 2)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 1.0 - 1.9], dtype=torch.float64))


def test_lars_leaves_zero_weights_to_plain_sgd():
    w = torch.zeros(3, requires_grad=True)  # ||w|| = 0: trust ratio 1, not 0 (a zero-initialised layer still learns)
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), -0.1))


def test_pretrain_with_lars(tmp_path):
    import csv
    import math

    from replearn.train.run import pretrain

    run = pretrain(out=str(tmp_path / "run"), data="digits", width=8, batch_size=64, limit=256, epochs=1,
                   knn_monitor=False, precision="32", optimizer="lars", lr=0.3, method="byol")
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("loss_epoch")]
    assert math.isfinite(float(rows[-1]["loss_epoch"]))


def test_metrics_log_the_scheduled_learning_rate(tmp_path):
    """metrics.csv's ``lr`` column (the report's curve) is the lr the step used: 0.4 at batch 256 is
    0.1 at batch 64, warmed up over 4 steps then cosine to 0 at step 12 (3 epochs x 4 steps)."""
    import csv

    from replearn.schedules import warmup_cosine
    from replearn.train.run import pretrain

    run = pretrain(out=str(tmp_path / "run"), data="digits", width=8, batch_size=64, limit=256, epochs=3,
                   knn_monitor=False, precision="32", lr=0.4, warmup_epochs=1)
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("lr")]
    assert [int(r["step"]) for r in rows] == [3, 7, 11]  # every 4th step is logged
    for r in rows:
        assert float(r["lr"]) == pytest.approx(0.1 * warmup_cosine(int(r["step"]), 12, 4), rel=1e-6)
