"""Frozen-feature probes: kNN against a naive float64 loop, linear and few-label against sklearn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from replearn.errors import ReplearnError
from replearn.evaluate.fewlabel import few_label_accuracy, label_subset
from replearn.evaluate.knn import knn_accuracy, knn_predict
from replearn.evaluate.linear import linear_probe_accuracy


def naive_knn(train, labels, test, k, temperature, num_classes):
    """Reference: per test item all cosine similarities in float64, sort, top-k, exp(sim/T) vote."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    preds = []
    for q in test:
        sims = [float(q @ x) / (np.linalg.norm(q) * np.linalg.norm(x)) for x in train]
        order = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(labels[i])] += math.exp(sims[i] / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return np.array(preds)


def blobs(n, dim, num_classes, seed, spread=1.0):
    """Gaussian clusters around centres fixed by (dim, num_classes); ``seed`` draws the samples."""
    centres = np.random.default_rng([dim, num_classes]).normal(size=(num_classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    x = centres[y] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.1), (50, 0.5), (137, 1.0)])
def test_knn_matches_naive_loop(k, temperature):
    x_train, y_train = blobs(150, 8, 4, seed=0, spread=1.5)
    x_test, _ = blobs(60, 8, 4, seed=1, spread=1.5)
    ref = naive_knn(x_train, y_train, x_test, k, temperature, 4)
    got = knn_predict(
        torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, k=k, temperature=temperature
    )
    np.testing.assert_array_equal(got.numpy(), ref)
    # The reference must not be trivial: the vote is not a constant and k matters.
    assert len(set(ref.tolist())) > 1


def test_knn_hand_worked_case():
    # Train directions: class 0 along x, class 1 along y (twice; [0, 2] normalises to [0, 1]).
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[10.0, 1.0]])  # cos to class 0: 0.995, to each class-1 item: 0.0995
    # k=1: the nearest item is class 0.
    assert knn_predict(train, labels, test, k=1, temperature=0.1).tolist() == [0]
    # k=3, T=0.1: exp(9.95) = 20952 against 2 * exp(0.995) = 5.4 -> class 0.
    assert knn_predict(train, labels, test, k=3, temperature=0.1).tolist() == [0]
    # k=3, T=10: exp(0.0995) = 1.10 against 2 * exp(0.00995) = 2.02 -> class 1 (near-majority vote).
    assert knn_predict(train, labels, test, k=3, temperature=10.0).tolist() == [1]
    assert knn_accuracy(train, labels, torch.tensor([[10.0, 1.0], [0.1, 3.0]]), [0, 0], k=1) == 50.0


def test_knn_tiny_temperature_does_not_overflow():
    # exp(sim / 0.001) is inf in float32 for every item; the vote must still follow the single
    # nearest item (class 1) rather than tie all classes at inf and fall back to class 0.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.2]]), k=3, temperature=1e-3).tolist() == [1]


def test_knn_chunking_and_input_types_do_not_change_result():
    x_train, y_train = blobs(300, 16, 5, seed=2, spread=2.0)
    x_test, y_test = blobs(101, 16, 5, seed=3, spread=2.0)
    full = knn_predict(x_train, y_train, x_test, k=30, chunk=1024)
    for chunk in (1, 7, 100):
        assert torch.equal(knn_predict(x_train, y_train, x_test, k=30, chunk=chunk), full)
    as_torch = knn_predict(torch.from_numpy(x_train).double(), torch.from_numpy(y_train), x_test, k=30)
    assert torch.equal(as_torch, full)
    acc = knn_accuracy(x_train, y_train, x_test, y_test, k=30)
    assert acc == pytest.approx(100.0 * (full.numpy() == y_test).mean())
    assert 50.0 < acc <= 100.0


def test_knn_k_larger_than_train_size():
    x_train, y_train = blobs(12, 4, 3, seed=4)
    x_test, _ = blobs(20, 4, 3, seed=5)
    got = knn_predict(x_train, y_train, x_test, k=200, temperature=0.3)
    np.testing.assert_array_equal(got.numpy(), naive_knn(x_train, y_train, x_test, 12, 0.3, 3))
    # num_classes beyond the labels present only adds empty classes.
    assert torch.equal(knn_predict(x_train, y_train, x_test, k=200, temperature=0.3, num_classes=7), got)


def test_knn_rejects_bad_inputs():
    x, y = blobs(10, 3, 2, seed=6)
    with pytest.raises(ValueError, match="train labels"):
        knn_predict(x, y[:5], x)
    with pytest.raises(ValueError, match=">= 0"):
        knn_predict(x, np.full(10, -1), x)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(x, y, x, num_classes=1)


def test_linear_probe_separable_data_is_perfect():
    x_train, y_train = blobs(400, 32, 5, seed=7, spread=0.05)
    x_test, y_test = blobs(200, 32, 5, seed=17, spread=0.05)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) == 100.0
    assert (
        linear_probe_accuracy(torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test) == 100.0
    )


def test_linear_probe_equals_sklearn_pipeline():
    x, y = blobs(700, 20, 6, seed=8, spread=3.0)
    x *= np.logspace(-3, 3, 20, dtype=np.float32)  # wildly different scales: standardising matters
    x_train, y_train, x_test, y_test = x[:500], y[:500], x[500:], y[500:]
    for C in (0.001, 1.0):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300))
        ref = 100.0 * np.mean(pipe.fit(x_train, y_train).predict(x_test) == y_test)
        assert linear_probe_accuracy(x_train, y_train, x_test, y_test, C=C, max_iter=300, solver="sklearn") == ref
        assert abs(linear_probe_accuracy(x_train, y_train, x_test, y_test, C=C) - ref) <= 1.0  # 2 of 200
    strong, weak = (linear_probe_accuracy(x_train, y_train, x_test, y_test, C=c) for c in (1e-5, 10.0))
    assert strong != weak  # C is not ignored


def test_linear_probe_silences_only_convergence_warnings(monkeypatch):
    x, y = blobs(300, 50, 4, seed=9, spread=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linear_probe_accuracy(x, y, x, y, C=100.0, max_iter=2, solver="sklearn")  # stops early: sklearn warns
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]

    class NoisyLogisticRegression(LogisticRegression):
        def fit(self, *args, **kwargs):
            warnings.warn("unrelated", UserWarning, stacklevel=1)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr("replearn.evaluate.linear.LogisticRegression", NoisyLogisticRegression)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linear_probe_accuracy(x, y, x, y, C=100.0, max_iter=2, solver="sklearn")
    assert [str(w.message) for w in caught] == ["unrelated"]


def test_label_subset_exact_deterministic_and_seeded():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 10, size=2000)
    labels[:50] = -1  # unlabelled items are never picked
    a = label_subset(labels, 4, seed=0)
    assert len(np.unique(a)) == len(a) == 40
    assert np.bincount(labels[a], minlength=10).tolist() == [4] * 10
    np.testing.assert_array_equal(a, label_subset(torch.from_numpy(labels), 4, seed=0))
    assert not np.array_equal(a, label_subset(labels, 4, seed=1))
    b = label_subset(labels, 25, seed=2)
    assert np.bincount(labels[b], minlength=10).tolist() == [25] * 10
    # Every class uses all the items it has when per_class equals the smallest class.
    small = np.array([0, 0, 1, 1, 1, 2, 2])
    assert sorted(small[label_subset(small, 2, seed=3)].tolist()) == [0, 0, 1, 1, 2, 2]
    for seed in range(5):  # per_class == class size: every item exactly once, whatever the seed
        assert label_subset(np.repeat([0, 1, 2], 5), 5, seed).tolist() == list(range(15))


def test_label_subset_names_the_short_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(ReplearnError, match="class 1 has only 3") as err:
        label_subset(labels, 4, seed=0)
    assert err.value.hint == "use per_class <= 3"


def test_few_label_accuracy_per_seed_and_summary():
    x_train, y_train = blobs(600, 16, 4, seed=11, spread=2.5)
    x_test, y_test = blobs(300, 16, 4, seed=12, spread=2.5)
    x_train[:, 0] *= 1000.0  # the few-item scaler must undo this, fit on the subset only
    x_test[:, 0] *= 1000.0
    seeds = (2, 3, 4)  # the first seed's accuracy is neither the min nor the max
    r = few_label_accuracy(x_train, y_train, x_test, y_test, per_class=5, seeds=seeds, C=0.1, solver="sklearn")
    assert len(r["per_seed"]) == 3
    assert r["min"] == min(r["per_seed"]) and r["max"] == max(r["per_seed"])
    assert r["mean"] == pytest.approx(sum(r["per_seed"]) / 3)
    for seed, acc in zip(seeds, r["per_seed"], strict=True):
        idx = label_subset(y_train, 5, seed)
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=200))
        assert acc == 100.0 * np.mean(pipe.fit(x_train[idx], y_train[idx]).predict(x_test) == y_test)
    assert r["min"] < r["max"]  # seeds draw different subsets
    fast = few_label_accuracy(x_train, y_train, x_test, y_test, per_class=5, seeds=seeds, C=0.1)
    np.testing.assert_allclose(fast["per_seed"], r["per_seed"], atol=100 / 300 + 1e-9)  # at most 1 of 300 apart
    with pytest.raises(ReplearnError, match="fewer than per_class=1000"):
        few_label_accuracy(x_train, y_train, x_test, y_test, per_class=1000)


def test_select_C_picks_the_grid_value_best_on_a_train_holdout():
    from replearn.evaluate.linear import linear_probe, select_C

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    x[:, 0] += 0.6 * y  # one weak informative direction among noise: heavy regularisation wins
    grid = (1e-4, 0.01, 10.0)
    perm = np.random.default_rng(0).permutation(600)
    val, fit = perm[:60], perm[60:]
    scores = []
    for C in grid:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=200)).fit(x[fit], y[fit])
        scores.append(pipe.score(x[val], y[val]))
    assert select_C(x, y, grid=grid, solver="sklearn") == grid[int(np.argmax(scores))]
    assert select_C(x, y, grid=grid) == grid[int(np.argmax(scores))]  # the torch solver picks the same
    acc, C = linear_probe(x, y, x[:100], y[:100])
    assert C in (0.01, 0.1, 1.0) and 0 <= acc <= 100
