"""Semi-supervised targets and losses against hand-computed cases and float64 loops."""

import math

import pytest
import torch

from replearn.losses.semisup import (
    align_distribution,
    confidence_mask,
    flexmatch_thresholds,
    graph_contrastive_loss,
    mse_consistency,
    pseudo_label_graph,
    pseudo_label_loss,
    sharpen,
    soft_cross_entropy,
)
from replearn.views.mix import mix_weights, mixup


def test_sharpen_hand_case_and_limits():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    # T = 1/2: squares renormalised, 0.36, 0.09, 0.01 over 0.46
    torch.testing.assert_close(sharpen(p, 0.5), torch.tensor([[0.36, 0.09, 0.01]]) / 0.46)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    torch.testing.assert_close(sharpen(p, 0.01), torch.tensor([[1.0, 0.0, 0.0]]))
    # a row with underflowing powers still sums to 1 (0.1^(1/0.01) = 1e-100 in float32 is 0)
    tiny = torch.tensor([[0.1, 0.1, 0.8]])
    assert torch.isfinite(sharpen(tiny, 0.01)).all() and abs(sharpen(tiny, 0.01).sum().item() - 1) < 1e-6
    with pytest.raises(ValueError):
        sharpen(p, 0.0)


def test_sharpen_matches_float64_loop():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 7, generator=g), dim=1)
    t = 0.5
    ref = torch.zeros(5, 7, dtype=torch.float64)
    for i in range(5):
        powers = [float(p[i, j]) ** (1 / t) for j in range(7)]
        for j in range(7):
            ref[i, j] = powers[j] / sum(powers)
    torch.testing.assert_close(sharpen(p, t).double(), ref, atol=1e-6, rtol=1e-5)


def test_mixup_of_a_known_pair():
    x1, x2 = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    y1, y2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    xm, ym = mixup(x1, y1, x2, y2, torch.tensor([0.7, 0.5]))
    torch.testing.assert_close(xm[0], torch.full((1, 2, 2), 0.7))
    torch.testing.assert_close(xm[1], torch.full((1, 2, 2), 0.5))
    torch.testing.assert_close(ym, torch.tensor([[0.7, 0.3], [0.5, 0.5]]))


def test_mix_weights_keep_the_first_input_dominant_and_are_seeded():
    lam = mix_weights(20_000, 1.0, torch.Generator().manual_seed(0))
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    # Beta(1, 1) is uniform, so max(l, 1 - l) is uniform on [1/2, 1]: mean 3/4, variance 1/48
    assert abs(lam.mean().item() - 0.75) < 0.005 and abs(lam.var().item() - 1 / 48) < 0.002
    again = mix_weights(20_000, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(lam, again)
    assert not torch.equal(lam, mix_weights(20_000, 1.0, torch.Generator().manual_seed(1)))
    state = torch.get_rng_state()
    mix_weights(10, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert torch.equal(mix_weights(3, 0.0, torch.Generator()), torch.ones(3))


def test_distribution_alignment_on_a_known_running_mean():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    running = torch.tensor([0.5, 0.25, 0.25])  # the model over-predicts class 0
    labelled = torch.full((3,), 1 / 3)
    # p * (1/3) / running = (1/3, 0.4, 4/15), which already sums to 1
    torch.testing.assert_close(align_distribution(p, running, labelled), torch.tensor([[1 / 3, 0.4, 4 / 15]]))
    # a model whose running mean equals the labelled marginal is left as it is
    torch.testing.assert_close(align_distribution(p, labelled, labelled), p)


def test_fixmatch_mask_at_the_threshold():
    p = torch.tensor([[0.95, 0.05], [0.9499, 0.0501], [0.02, 0.98], [0.5, 0.5]])
    assert confidence_mask(p, 0.95).tolist() == [1.0, 0.0, 1.0, 0.0]  # >=: a confidence equal to it counts
    # per-row thresholds (class-adaptive)
    assert confidence_mask(p, torch.tensor([0.96, 0.9, 0.99, 0.5])).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_pseudo_label_loss_hand_case():
    weak = torch.tensor([[0.03, 0.97], [0.6, 0.4]])  # row 1 below the threshold: masked out
    strong = torch.tensor([[0.0, math.log(3.0)], [5.0, -5.0]])  # row 0: softmax (1/4, 3/4)
    loss, mask = pseudo_label_loss(strong, weak, 0.95)
    assert mask.tolist() == [1.0, 0.0]
    assert abs(loss.item() - math.log(4 / 3) / 2) < 1e-6  # averaged over both rows, as in the paper
    assert pseudo_label_loss(strong.bfloat16(), weak, 0.95)[0].dtype == torch.float32


def test_soft_cross_entropy_and_mse_against_loops():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(4, 5, generator=g), torch.softmax(torch.randn(4, 5, generator=g), dim=1)
    ref = 0.0
    for i in range(4):
        den = sum(math.exp(float(logits[i, j])) for j in range(5))
        ref -= sum(float(target[i, j]) * math.log(math.exp(float(logits[i, j])) / den) for j in range(5))
    assert abs(soft_cross_entropy(logits, target).item() - ref / 4) < 1e-5
    p = torch.softmax(logits, dim=1)
    ref = sum((float(p[i, j]) - float(target[i, j])) ** 2 for i in range(4) for j in range(5)) / (4 * 5)
    assert abs(mse_consistency(p, target).item() - ref) < 1e-6
    assert mse_consistency(target, target).item() == 0


def test_flexmatch_thresholds_hand_case():
    learned = torch.tensor([0, 0, 1, -1, -1, -1])  # sigma = (2, 1, 0), three images not learned yet
    # warm-up: beta = sigma / max(2, 3) = (2/3, 1/3, 0); threshold 0.9 * beta / (2 - beta)
    torch.testing.assert_close(flexmatch_thresholds(learned, 3, 0.9), torch.tensor([0.45, 0.18, 0.0]))
    # without warm-up: beta = sigma / 2 = (1, 1/2, 0) -> (0.9, 0.3, 0)
    torch.testing.assert_close(flexmatch_thresholds(learned, 3, 0.9, warmup=False), torch.tensor([0.9, 0.3, 0.0]))
    assert flexmatch_thresholds(torch.full((4,), -1), 2, 0.95).tolist() == [0.0, 0.0]


def test_pseudo_label_graph_hand_cases():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # p_i . p_j: images 0 and 1 share class 0 for sure, image 2 shares with nobody
    torch.testing.assert_close(pseudo_label_graph(p, 0.8), torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    q = torch.tensor([[0.6, 0.4], [0.6, 0.4]])  # p_0 . p_1 = 0.36 + 0.16 = 0.52, and W_00 = 1 whatever p_0 . p_0 is
    torch.testing.assert_close(pseudo_label_graph(q, 0.8), torch.eye(2))
    torch.testing.assert_close(pseudo_label_graph(q, 0.5), torch.tensor([[1 / 1.52, 0.52 / 1.52], [0.52 / 1.52, 1 / 1.52]]))
    torch.testing.assert_close(pseudo_label_graph(p, 1.01), torch.eye(3))  # > 1: instance contrast


def test_graph_contrastive_loss_matches_float64_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    w = torch.rand(5, 5, generator=g)
    w = w / w.sum(1, keepdim=True)
    t = 0.3
    total = 0.0
    for i in range(5):
        qi = q[i].double() / q[i].double().norm()
        sims = [float(qi @ (k[j].double() / k[j].double().norm())) / t for j in range(5)]
        log_z = math.log(sum(math.exp(s) for s in sims))
        total += -sum(float(w[i, j]) * (sims[j] - log_z) for j in range(5))
    got = graph_contrastive_loss(q, k, w, t)
    assert got.dtype == torch.float32 and abs(got.item() - total / 5) < 1e-5
    # the identity graph is InfoNCE with the other view of the same image as the positive
    eye = torch.eye(5)
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    ref = torch.nn.functional.cross_entropy(qn @ kn.t() / t, torch.arange(5))
    torch.testing.assert_close(graph_contrastive_loss(q, k, eye, t), ref)
