"""The torch linear probe: the objective's minimum by a naive float64 reference, scikit-learn's
solution at convergence, two classes, odd labels, warm starts and the folded raw weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from replearn.evaluate.linear import fit_linear_probe


def problem(n=240, d=10, k=4, seed=0):
    """Overlapping Gaussian classes with correlated features of very different scales."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d))
    mix = rng.normal(size=(d, d)) + 3 * np.eye(d)  # correlated features: an ill-conditioned covariance
    x = (centres[y] + 1.5 * rng.normal(size=(n, d))) @ mix
    x *= np.logspace(-2, 2, d)
    return x.astype(np.float32), y


def naive_gradient(z, y, coef, intercept, C, binary=False):
    """Gradient of mean_i CE(z_i W^T + b, y_i) + ||W||^2 / (2 C n) in float64, item by item
    (two classes: scikit-learn's binary problem, one weight vector w = W[1] - W[0])."""
    n, k = len(y), len(coef)
    if binary:  # sigmoid loss on the logit difference; its gradient, put on the second row
        w, b = coef[1] - coef[0], intercept[1] - intercept[0]
        gw, gb = w / (C * n), 0.0
        for zi, yi in zip(z, y, strict=True):
            p = 1.0 / (1.0 + math.exp(-(zi @ w + b)))
            gw = gw + (p - yi) * zi / n
            gb += (p - yi) / n
        return np.concatenate([gw, [gb]])
    gw, gb = coef / (C * n), np.zeros(k)
    for zi, yi in zip(z, y, strict=True):
        logits = [float(zi @ coef[j] + intercept[j]) for j in range(k)]
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        for j in range(k):
            p = e[j] / sum(e) - (1.0 if j == yi else 0.0)
            gw[j] += p * zi / n
            gb[j] += p / n
    return np.concatenate([gw.ravel(), gb])


def standardised(x):
    x = x.astype(np.float64)
    return (x - x.mean(0)) / x.std(0)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_torch_probe_reaches_the_minimum_a_naive_float64_gradient_finds(C):
    x, y = problem()
    probe = fit_linear_probe(x, y, C, max_iter=500, tol=1e-9)
    z = standardised(x)
    g = naive_gradient(z, y, probe.coef, probe.intercept, C)
    g0 = naive_gradient(z, y, np.zeros_like(probe.coef), np.zeros(4), C)
    assert np.linalg.norm(g) < 1e-4 * np.linalg.norm(g0)
    # scikit-learn's solution at convergence is the same point
    ref = LogisticRegression(C=C, max_iter=20_000, tol=1e-10).fit(StandardScaler().fit_transform(x), y)
    np.testing.assert_allclose(probe.coef, ref.coef_, rtol=0, atol=2e-3 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(probe.decision_function(x), ref.decision_function(StandardScaler().fit(x).transform(x)),
                               atol=2e-3 * np.abs(ref.coef_).max() * 10)


def test_two_classes_solve_scikit_learns_binary_problem():
    x, y = problem(k=2, seed=1)
    C = 0.05
    probe = fit_linear_probe(x, y, C, max_iter=500, tol=1e-9)
    assert probe.coef.shape == (2, 10)
    z = standardised(x)
    g = naive_gradient(z, y, probe.coef, probe.intercept, C, binary=True)
    g0 = naive_gradient(z, y, np.zeros((2, 10)), np.zeros(2), C, binary=True)
    assert np.linalg.norm(g) < 1e-4 * np.linalg.norm(g0)
    ref = LogisticRegression(C=C, max_iter=20_000, tol=1e-10).fit(z, y)  # one row: class 1 against 0
    diff = probe.decision_function(x)[:, 1] - probe.decision_function(x)[:, 0]
    np.testing.assert_allclose(diff, ref.decision_function(z), atol=1e-3 * np.abs(ref.decision_function(z)).max())


def test_labels_keep_their_values_and_one_class_predicts_itself():
    x, y = problem(k=3, seed=2)
    odd = np.array([3, 7, 11])[y]
    probe = fit_linear_probe(x, odd, 0.1)
    assert probe.classes.tolist() == [3, 7, 11]
    pred = probe.predict(x)
    assert set(pred.tolist()) <= {3, 7, 11} and np.mean(pred == odd) > 0.6
    np.testing.assert_array_equal(pred, probe.classes[fit_linear_probe(x, y, 0.1).predict(x)])
    single = fit_linear_probe(x[:20], np.full(20, 5), 0.1)
    assert single.predict(x).tolist() == [5] * len(x)


def test_warm_start_reaches_the_same_solution():
    x, y = problem(seed=3)
    cold = fit_linear_probe(x, y, 1.0, max_iter=500, tol=1e-9)
    near = fit_linear_probe(x, y, 0.1, max_iter=500, tol=1e-9)
    warm = fit_linear_probe(x, y, 1.0, max_iter=500, tol=1e-9, init=near)
    np.testing.assert_allclose(warm.coef, cold.coef, atol=1e-3 * np.abs(cold.coef).max())


def test_raw_weights_fold_the_standardisation_in():
    x, y = problem(seed=4)
    for solver in ("torch", "sklearn"):
        probe = fit_linear_probe(x, y, 0.1, solver=solver)
        w, b = probe.raw_weights()
        np.testing.assert_allclose(x.astype(np.float64) @ w.T + b, probe.decision_function(x), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="solver must be one of torch, sklearn"):
        fit_linear_probe(x, y, 0.1, solver="liblinear")


def test_lbfgs_finds_a_quadratics_closed_form_minimum():
    import torch

    from replearn.evaluate.linear import lbfgs

    rng = np.random.default_rng(5)
    q = rng.normal(size=(12, 12))
    A = torch.from_numpy(q @ q.T + 0.5 * np.eye(12))  # positive definite, condition number ~100
    b = torch.from_numpy(rng.normal(size=12))
    x, iterations = lbfgs(lambda x: (float(0.5 * x @ A @ x - b @ x), A @ x - b), torch.zeros(12, dtype=torch.float64),
                          max_iter=200, tol=1e-10)
    exact = torch.linalg.solve(A, b)
    assert exact.abs().max() > 0.1  # the start (0) is far from it
    # it stops once an iteration lowers the loss by under 1e-12 of itself: about 1e-6 from x*
    torch.testing.assert_close(x, exact, atol=1e-5, rtol=0)
    assert 0 < iterations < 200
    _, capped = lbfgs(lambda x: (float(0.5 * x @ A @ x - b @ x), A @ x - b), torch.zeros(12, dtype=torch.float64),
                      max_iter=3, tol=1e-10)
    assert capped == 3


@pytest.mark.parametrize(("n", "d", "dense_max", "exact_max", "low_rank"), [
    (60, 300, 100, 2048, 512),  # wider than many: the exact low-rank form from the (n, n) Gram matrix
    (240, 10, 5, 100, 4),  # more items than EXACT_MAX: the top directions of a randomised SVD
])
def test_low_rank_preconditioning_reaches_the_same_minimum(monkeypatch, n, d, dense_max, exact_max, low_rank):
    import importlib

    linear = importlib.import_module("replearn.evaluate.linear")  # the package's `evaluate` is also a function
    monkeypatch.setattr(linear, "DENSE_MAX", dense_max)
    monkeypatch.setattr(linear, "EXACT_MAX", exact_max)
    monkeypatch.setattr(linear, "LOW_RANK", low_rank)
    x, y = problem(n=n, d=d)
    probe = fit_linear_probe(x, y, 1.0, max_iter=2000, tol=1e-9)
    z = standardised(x)
    g = naive_gradient(z, y, probe.coef, probe.intercept, 1.0)
    g0 = naive_gradient(z, y, np.zeros_like(probe.coef), np.zeros(4), 1.0)
    assert np.linalg.norm(g) < 1e-4 * np.linalg.norm(g0)


def test_low_rank_powers_compose_as_the_dense_matrix_powers():
    import torch

    from replearn.evaluate.linear import _LowRank

    gen = torch.Generator().manual_seed(0)
    xs, c, lam = torch.randn(30, 80, generator=gen), torch.rand(30, generator=gen) + 0.1, 0.05
    pre = _LowRank(xs, c, lam)
    cov = (xs.double().T * (c.double() / 30)) @ xs.double()
    ev, u = torch.linalg.eigh(cov)
    eye = torch.eye(80, dtype=torch.float64)
    for p in (-1.0, -0.5, 0.5):
        dense = (u * (ev.clamp(min=0) + lam) ** p) @ u.T
        torch.testing.assert_close(pre.times(eye, p), dense, atol=1e-6, rtol=1e-5)  # A is formed in float32
