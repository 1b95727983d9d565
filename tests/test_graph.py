"""kNN graph and label spreading against a dense float64 loop and hand-made cases."""

import torch

from replearn.nn.graph import knn_indices, label_spreading


def test_knn_indices_by_hand():
    # four points on the unit circle at 0, 10, 90 and 100 degrees
    ang = torch.tensor([0.0, 10.0, 90.0, 100.0]).deg2rad()
    x = torch.stack([ang.cos(), ang.sin()], 1)
    assert knn_indices(x, 1).squeeze(1).tolist() == [1, 0, 3, 2]
    # seen from 0 deg the others lie 10, 90 and 100 deg away: the two nearest are 10 and 90 deg
    assert knn_indices(x, 2, chunk=3)[0].tolist() == [1, 2]


def _dense_reference(nbrs, index, labels, c, alpha, iters):
    n, k = nbrs.shape
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in nbrs[i].tolist():
            w[i, j] += 1.0
            w[j, i] += 1.0
    d = w.sum(1)
    s = torch.zeros_like(w)
    for i in range(n):
        for j in range(n):
            s[i, j] = w[i, j] / (d[i] * d[j]).sqrt()
    y = torch.zeros(n, c, dtype=torch.float64)
    for i, lab in zip(index.tolist(), labels.tolist(), strict=True):
        y[i, lab] = 1.0
    f = y.clone()
    for _ in range(iters):
        f = alpha * s @ f + (1 - alpha) * y
    return f


def test_label_spreading_matches_dense_float64_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    nbrs = knn_indices(x, 4)
    index, labels = torch.tensor([0, 7, 13]), torch.tensor([0, 1, 2])
    got = label_spreading(nbrs, index, labels, 3, alpha=0.9, iters=12)
    ref = _dense_reference(nbrs, index, labels, 3, 0.9, 12)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_label_spreading_two_clusters_one_label_each():
    # two arcs of the unit circle, 0-19 and 70-89 degrees in 1-degree steps: with k = 2 each point's
    # neighbours are the adjacent angles, so each arc is one chain and no edge joins the arcs
    ang = torch.cat([torch.arange(0.0, 20.0), torch.arange(70.0, 90.0)]).deg2rad()
    x = torch.stack([ang.cos(), ang.sin()], 1)
    f = label_spreading(knn_indices(x, 2), torch.tensor([0, 39]), torch.tensor([1, 0]), 2)
    assert f.argmax(1).tolist() == [1] * 20 + [0] * 20
    assert (f[:20, 0] == 0).all() and (f[20:, 1] == 0).all()


def test_label_spreading_leaves_unreached_rows_zero():
    # two components with no edge between them; only the first holds a label
    nbrs = torch.tensor([[1], [0], [3], [2]])
    f = label_spreading(nbrs, torch.tensor([0]), torch.tensor([1]), 2, alpha=0.5, iters=5)
    assert f[2:].abs().sum() == 0 and f[:2, 1].gt(0).all()
