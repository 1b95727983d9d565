"""Disentanglement metrics: MI against hand-worked tables, sklearn and a naive loop; MIG and the
FactorVAE score on full factorial grids with known answers; FactorVAE against a naive per-vote loop."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from replearn.evaluate.disentangle import (
    _draw_batches,
    discretize,
    disentanglement,
    factorvae_score,
    mig,
    mutual_information,
)


def grid(*sizes):
    """Every combination of the factor values once: (prod(sizes), len(sizes)) int64."""
    return np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


def entropy_of(counts):
    """H in nats of the distribution proportional to ``counts``, by its definition."""
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts if c)


# ---------------------------------------------------------------- mutual information


def test_mutual_information_hand_worked():
    assert mutual_information([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(math.log(2), abs=1e-15)
    assert mutual_information([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(math.log(2), abs=1e-15)
    assert mutual_information([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0  # independent: exactly 0
    # a = 0 0 0 1, b = 0 0 1 1: joint p(0,0) = 1/2, p(0,1) = 1/4, p(1,1) = 1/4; p(a) = (3/4, 1/4),
    # p(b) = (1/2, 1/2). I = 1/2 log(4/3) + 1/4 log(2/3) + 1/4 log 2 = 3/2 log 2 - 3/4 log 3.
    want = 1.5 * math.log(2) - 0.75 * math.log(3)
    assert want == pytest.approx(0.2158, abs=1e-4)
    assert mutual_information([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(want, abs=1e-15)
    assert mutual_information([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(want, abs=1e-15)  # symmetric
    # Labels are names, not numbers: any integers, negative or sparse, give the same value.
    assert mutual_information([-5, -5, -5, 100], [7, 7, 3, 3]) == pytest.approx(want, abs=1e-15)
    assert mutual_information(np.array([3, 3, 3]), np.array([0, 1, 2])) == 0.0  # a constant: H(a) = 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_information_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, 500)
    b = (a + rng.integers(0, 3, 500)) % 9  # dependent on a, not a function of it
    got = mutual_information(a, b)
    assert got == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    assert 0.3 < got < math.log(7)  # not a trivial case
    assert mutual_information(torch.from_numpy(a), torch.from_numpy(b)) == got


def test_mutual_information_rejects_bad_inputs():
    with pytest.raises(ValueError, match="need equal"):
        mutual_information([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="integer labels"):
        mutual_information([0.5, 1.0], [0, 1])


# ---------------------------------------------------------------- discretize


def test_discretize_hand_worked():
    codes = np.array(
        [
            # bins = 4: col 0 edges 0 1 2 3 4, col 2 edges -1 -0.5 0 0.5 1
            [0.0, 7.0, -1.0],
            [0.999, 7.0, -0.5],  # -0.5 sits on an edge: the bin above it
            [1.0, 7.0, 0.2],
            [2.5, 7.0, 0.5],
            [4.0, 7.0, 1.0],  # the max: last bin, not a fifth one
        ]
    )
    got = discretize(codes, bins=4)
    assert got.dtype == np.int64
    assert got.T.tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 0], [0, 1, 2, 3, 3]]
    assert discretize(codes, bins=1).tolist() == np.zeros((5, 3), int).tolist()


def test_discretize_matches_histogram_counts():
    z = np.random.default_rng(0).normal(size=(1000, 4)) * [1.0, 10.0, 1e-3, 5.0] + [0.0, -3.0, 100.0, 2.0]
    got = discretize(torch.from_numpy(z).float(), bins=20)  # float32 tensor in, float64 binning
    z32 = z.astype(np.float32).astype(np.float64)
    for j in range(4):
        assert np.bincount(got[:, j], minlength=20).tolist() == np.histogram(z32[:, j], bins=20)[0].tolist()
        assert got[z32[:, j].argmax(), j] == 19 and got[z32[:, j].argmin(), j] == 0
    assert got.min() == 0 and got.max() == 19
    with pytest.raises(ValueError, match="bins"):
        discretize(z, bins=0)
    with pytest.raises(ValueError, match="NaN"):
        discretize(np.array([[0.0], [np.nan]]))


# ---------------------------------------------------------------- MIG


def test_mig_identity_code_is_one():
    f = grid(3, 4, 5)
    codes = f * [2.0, -0.5, 3.0] + [1.0, 4.0, -2.0]  # scaled, one flipped, shifted
    r = mig(codes, f)
    assert r["mig"] == pytest.approx(1.0, abs=1e-9)
    assert r["per_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)
    assert r["top_latent"] == [0, 1, 2] and r["skipped_factors"] == []
    assert r["factor_entropy"] == pytest.approx([math.log(3), math.log(4), math.log(5)], abs=1e-12)
    mi = np.array(r["mi"])
    assert mi.shape == (3, 3)
    assert np.diag(mi) == pytest.approx(r["factor_entropy"], abs=1e-12)
    assert np.abs(mi - np.diag(np.diag(mi))).max() < 1e-12  # other factors are independent on a grid
    # Permuting the latents moves top_latent with them and leaves the score.
    p = mig(codes[:, [2, 0, 1]], f)
    assert p["top_latent"] == [1, 2, 0] and p["mig"] == pytest.approx(1.0, abs=1e-9)


def test_mig_ignores_a_noise_latent_independent_of_the_factors():
    # The grid crossed with a 7-level nuisance: the noise latent takes 7 random values, each
    # equally often with every factor value, so it is exactly independent of every factor.
    full = grid(3, 4, 5, 7)
    noise = np.random.default_rng(0).normal(size=7)
    codes = np.column_stack([full[:, :3], noise[full[:, 3]]])
    r = mig(codes, full[:, :3])
    assert r["mig"] == pytest.approx(1.0, abs=1e-9)
    assert np.abs(np.array(r["mi"])[:, 3]).max() < 1e-12


def test_mig_rotation_of_two_factors():
    # z1 = f1 + f2, z2 = f1 - f2: (f1, 3 - f2) is distributed as (f1, f2) on the grid, so
    # I(f1 + f2; f1) = I(f1 - f2; f1), and likewise for f2: the gap is 0 for both mixed factors.
    f = grid(3, 4, 5)
    r = mig(np.column_stack([f[:, 0] + f[:, 1], f[:, 0] - f[:, 1], f[:, 2]]), f)
    assert r["per_factor"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)
    assert r["mig"] == pytest.approx(1 / 3, abs=1e-9)


def test_mig_partial_mixing_against_closed_form():
    # z1 = f1 + f2, z2 = f2, z3 = f3 on a 3 x 4 x 5 grid. S = f1 + f2 takes 0..5 with counts
    # 1 2 3 3 2 1 (of 12). I(S; f1) = H(S) - H(f2), I(S; f2) = H(S) - H(f1), I(f2; f1) = 0, so
    # gap(f1) = (H(S) - log 4) / log 3, gap(f2) = (log 4 - (H(S) - log 3)) / log 4, gap(f3) = 1.
    f = grid(3, 4, 5)
    h_s = entropy_of([1, 2, 3, 3, 2, 1])
    want = [(h_s - math.log(4)) / math.log(3), (math.log(4) - h_s + math.log(3)) / math.log(4), 1.0]
    r = mig(np.column_stack([f[:, 0] + f[:, 1], f[:, 1], f[:, 2]]), f)
    assert r["per_factor"] == pytest.approx(want, abs=1e-12)
    assert r["mig"] == pytest.approx(sum(want) / 3, abs=1e-12)
    assert r["top_latent"] == [0, 1, 2]
    assert 0.5 < r["mig"] < 0.9  # the mixing costs


def test_mig_duplicated_latent_has_no_gap():
    f = grid(3, 4, 5)
    r = mig(np.column_stack([f[:, 0], f[:, 0], f[:, 1], f[:, 2]]), f)
    assert r["per_factor"][0] == 0.0 and r["top_latent"][0] == 0
    assert r["mig"] == pytest.approx(2 / 3, abs=1e-9)
    r = mig(np.column_stack([f[:, 0], 3 * f[:, 0] + 1, f[:, 1], f[:, 2]]), f)  # an affine copy
    assert r["per_factor"][0] == pytest.approx(0.0, abs=1e-12)


def test_mig_skips_constant_factor_and_handles_one_latent():
    f = grid(3, 4)
    f3 = np.column_stack([f, np.full(len(f), 2)])  # a factor with one value
    r = mig(f3[:, :1].astype(float), f3)  # D = 1: the second-best MI is 0
    # factor 0: gap = H / H = 1; factor 1 is independent of the only latent: gap 0.
    assert r["per_factor"] == [pytest.approx(1.0, abs=1e-12), 0.0, None]
    assert r["top_latent"] == [0, 0, None] and r["skipped_factors"] == [2]
    assert r["mig"] == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="single value"):
        mig(f[:, :1], np.zeros((len(f), 2), int))


def naive_mig(codes, factors, bins):
    """Reference: bin index min(floor((x - min) / width), bins - 1), joint counts in dicts, MI and
    H by their definitions with math.log, every (factor, latent) pair in Python loops."""
    n, d = len(codes), len(codes[0])
    binned = []
    for j in range(d):
        col = [row[j] for row in codes]
        lo, hi = min(col), max(col)
        binned.append([min(int((x - lo) / (hi - lo) * bins), bins - 1) for x in col])
    mi, h = [], []
    for k in range(len(factors[0])):
        v = [int(row[k]) for row in factors]
        cv = Counter(v)
        h.append(-sum(c / n * math.log(c / n) for c in cv.values()))
        row = []
        for j in range(d):
            cz, joint = Counter(binned[j]), Counter(zip(binned[j], v, strict=True))
            row.append(sum(c / n * math.log((c / n) / (cz[a] / n * cv[b] / n)) for (a, b), c in joint.items()))
        mi.append(row)
    gaps = [(sorted(r)[-1] - sorted(r)[-2]) / hk for r, hk in zip(mi, h, strict=True)]
    return mi, h, gaps


@pytest.mark.parametrize("seed", [0, 1])
def test_mig_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    factors = np.column_stack([rng.integers(0, 3, 300), rng.integers(0, 5, 300), rng.integers(0, 2, 300)])
    codes = rng.normal(size=(300, 4))
    codes[:, 1] += 2 * factors[:, 1]  # one informative latent, the rest weakly (by chance)
    codes[:, 3] += factors[:, 0] - factors[:, 2]
    mi, h, gaps = naive_mig(codes.tolist(), factors.tolist(), bins=7)
    r = mig(codes, factors, bins=7)
    assert np.abs(np.array(r["mi"]) - np.array(mi)).max() < 1e-12
    assert r["factor_entropy"] == pytest.approx(h, abs=1e-12)
    assert r["per_factor"] == pytest.approx(gaps, abs=1e-12)
    assert r["mig"] == pytest.approx(sum(gaps) / 3, abs=1e-12)
    assert r["top_latent"][1] == 1 and 0.2 < r["per_factor"][1] < 1


# ---------------------------------------------------------------- FactorVAE


def test_factorvae_identity_and_noise_codes_score_one():
    f = grid(3, 4, 5)
    rng = np.random.default_rng(0)
    for codes in (f * [2.0, -0.5, 3.0], np.column_stack([f, rng.normal(size=len(f))])):
        r = factorvae_score(codes, f, n_train=600, n_eval=300)
        assert r["score"] == 1.0 and r["train_accuracy"] == 1.0
        votes = np.array(r["votes"])
        assert votes.sum() == 600 and votes.shape == (3, codes.shape[1])
        assert (votes[:, :3] == np.diag(np.diag(votes))).all()  # every vote (d = k, k)
        assert all(150 < c < 250 for c in np.diag(votes))  # factors picked uniformly
        assert r["dim_to_factor"][:3] == [0, 1, 2] and r["reason"] is None


def test_factorvae_two_factors_in_one_latent_scores_two_thirds():
    # z1 = f1 + f2, z2 = f3. Normalised, fixing f1 leaves z1 variance 1.25 / 1.92 = 0.65 and z2 1;
    # fixing f2 leaves z1 0.67 / 1.92 = 0.35: both factors vote for z1, which the classifier maps to
    # one of them. f3 votes are right, so the score is about 1/3 + 1/3.
    f = grid(3, 4, 5)
    codes = np.column_stack([f[:, 0] + f[:, 1], f[:, 2]])
    for seed in (0, 1):
        r = factorvae_score(codes, f, seed=seed)
        assert r["score"] == pytest.approx(2 / 3, abs=0.03)
        votes = np.array(r["votes"])
        assert votes[:2, 1].sum() < 50 and votes[2].tolist() == [0, votes[2].sum()]


def test_factorvae_passes_a_rotation_that_mig_punishes():
    # A 30 degree rotation of the standardised f1, f2: fixing f1 leaves var(z1) = sin^2 = 1/4 and
    # var(z2) = 3/4, fixing f2 the reverse, so each factor still has its own least-variable latent
    # and FactorVAE says 1; but each rotated latent carries both factors, so MIG drops.
    f = grid(3, 4, 5)
    a, b = ((f[:, :2] - f[:, :2].mean(0)) / f[:, :2].std(0)).T
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    codes = np.column_stack([c * a + s * b, -s * a + c * b, f[:, 2]])
    r = factorvae_score(codes, f)
    assert r["score"] > 0.98 and np.array(r["votes"])[[0, 1], [1, 0]].sum() < 50
    assert mig(codes, f)["mig"] < 0.9


def test_factorvae_does_not_see_a_duplicated_latent():
    # Unlike MIG, a latent copied twice still scores 1: the copy never wins the argmin (tie ->
    # lowest latent) and the unseen latent maps to the most frequent factor.
    f = grid(3, 4, 5)
    r = factorvae_score(np.column_stack([f[:, 0], f[:, 0], f[:, 1], f[:, 2]]), f, n_train=300, n_eval=300)
    assert r["score"] == 1.0
    assert np.array(r["votes"])[:, 1].sum() == 0
    assert r["dim_to_factor"][1] == int(np.array(r["votes"]).sum(1).argmax())


def test_factorvae_prunes_collapsed_latents():
    f = grid(3, 4, 5)
    rng = np.random.default_rng(0)
    codes = np.column_stack([f[:, 0], np.full(len(f), 5.0), f[:, 1], 0.01 * rng.normal(size=len(f)), f[:, 2]])
    r = factorvae_score(codes, f, n_train=500, n_eval=200)
    assert r["kept_dims"] == [0, 2, 4]
    assert r["dim_to_factor"] == [0, None, 1, None, 2]
    assert np.array(r["votes"])[:, [1, 3]].sum() == 0 and r["score"] == 1.0
    # Without pruning the small latent is kept (and, normalised, it is pure noise); a constant
    # latent is always dropped: it has no std to divide by.
    assert factorvae_score(codes, f, n_train=50, n_eval=50, prune=0.0)["kept_dims"] == [0, 2, 3, 4]
    r = factorvae_score(0.01 * codes, f, n_train=50, n_eval=50)
    assert r["score"] == 0.0 and r["kept_dims"] == [] and "prune" in r["reason"]


def test_factorvae_same_seed_same_result():
    f = grid(3, 4, 5)
    codes = np.random.default_rng(0).normal(size=(len(f), 4)) + f[:, [0, 1, 2, 0]]
    a = factorvae_score(codes, f, n_train=400, n_eval=400, seed=3)
    assert a == factorvae_score(codes, f, n_train=400, n_eval=400, seed=3)
    assert a["votes"] != factorvae_score(codes, f, n_train=400, n_eval=400, seed=4)["votes"]
    assert sum(map(sum, a["votes"])) == 400
    # Torch input, float32 or float64, gives the same votes as numpy.
    assert a == factorvae_score(torch.from_numpy(codes), torch.from_numpy(f), n_train=400, n_eval=400, seed=3)
    c32 = codes.astype(np.float32)
    assert factorvae_score(c32, f, n_train=400, n_eval=400, seed=3) == factorvae_score(
        torch.from_numpy(c32), f, n_train=400, n_eval=400, seed=3
    )


def test_factorvae_matches_naive_loop_over_votes():
    # Same draws as factorvae_score (one Generator, same call), then every vote by a Python loop:
    # statistics.variance per latent, argmin, and a Counter majority vote.
    rng = np.random.default_rng(5)
    f = grid(2, 3, 4)
    codes = rng.normal(size=(len(f), 5)) * [1, 2, 0.5, 1, 0.01] + f[:, [0, 1, 2, 1, 0]] * [1, 0.5, 1, 0.2, 0]
    n_train, n_eval, batch = 300, 200, 8
    got = factorvae_score(codes, f, n_train=n_train, n_eval=n_eval, batch=batch, seed=7)
    assert got["kept_dims"] == [0, 1, 2, 3]  # latent 4 has std 0.01 < 0.05
    ks, rows = _draw_batches(f, [0, 1, 2], n_train + n_eval, batch, np.random.default_rng(7))
    std = [statistics.pstdev(codes[:, j].tolist()) for j in range(4)]
    pairs = []
    for k, r in zip(ks.tolist(), rows.tolist(), strict=True):
        var = [statistics.variance([codes[i, j] / std[j] for i in r]) for j in range(4)]
        pairs.append((var.index(min(var)), k))
    train, ev = pairs[:n_train], pairs[n_train:]
    fallback = Counter(k for _, k in train).most_common(1)[0][0]
    votes = {d: Counter(k for dd, k in train if dd == d) for d in range(4)}
    predict = {d: min(c, key=lambda k, c=c: (-c[k], k)) if c else fallback for d, c in votes.items()}
    assert got["votes"] == [[votes[d][k] for d in range(4)] + [0] for k in range(3)]
    assert got["train_accuracy"] == sum(predict[d] == k for d, k in train) / n_train
    assert got["score"] == sum(predict[d] == k for d, k in ev) / n_eval
    assert 0.4 < got["score"] < 0.95  # a case where the votes disagree


def test_draws_fix_the_factor_and_pick_values_uniformly():
    # Not a grid: factor 0 is 0 on 90% of the rows. The value is drawn uniformly over the values
    # that occur, not in proportion to their rows.
    rng = np.random.default_rng(0)
    f = np.column_stack([(rng.random(1000) < 0.1).astype(int), rng.integers(0, 3, 1000), np.zeros(1000, int)])
    ks, rows = _draw_batches(f, [0, 1], 4000, 16, np.random.default_rng(1))
    fixed = f[rows, ks[:, None]]  # (n, batch) the chosen factor's value at every drawn row
    assert (fixed == fixed[:, :1]).all()
    assert abs((ks == 0).mean() - 0.5) < 0.03
    assert abs(fixed[ks == 0, 0].mean() - 0.5) < 0.04  # about half the votes fix the rare value
    # With replacement: a batch larger than its group still works.
    small = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    ks, rows = _draw_batches(small, [0, 1], 50, 64, np.random.default_rng(0))
    assert rows.shape == (50, 64) and (small[rows, ks[:, None]] == small[rows[:, :1], ks[:, None]]).all()
    r = factorvae_score(rng.normal(size=(1000, 3)), f, n_train=100, n_eval=100)
    assert r["skipped_factors"] == [2] and sum(r["votes"][2]) == 0


def test_factorvae_rejects_bad_inputs():
    f = grid(3, 4)
    z = f.astype(float)
    with pytest.raises(ValueError, match="batch"):
        factorvae_score(z, f, batch=1)
    with pytest.raises(ValueError, match="N = 12"):
        factorvae_score(z, f[:5])
    with pytest.raises(ValueError, match="integer value indices"):
        factorvae_score(z, f + 0.5)
    with pytest.raises(ValueError, match="single value"):
        factorvae_score(z, np.zeros_like(f))


# ---------------------------------------------------------------- both


def test_disentanglement_report_is_json_and_matches_the_parts():
    f = grid(3, 4, 5)
    codes = np.column_stack([f[:, 0] + f[:, 1], f[:, 1], f[:, 2], np.full(len(f), 1.0)])
    r = disentanglement(torch.from_numpy(codes).float(), torch.from_numpy(f), ["shape", "scale", "x"], seed=2)
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    assert r["factor_names"] == ["shape", "scale", "x"]
    m = mig(codes, f)
    assert r["mig"]["mig"] == m["mig"] and r["mig"]["mi"] == m["mi"]
    assert r["mig"]["per_factor_by_name"] == dict(zip(["shape", "scale", "x"], m["per_factor"], strict=True))
    assert r["mig"]["top_latent_by_name"] == {"shape": 0, "scale": 1, "x": 2}
    fv = factorvae_score(codes, f, seed=2)
    assert r["factorvae"]["score"] == fv["score"] and r["factorvae"]["votes"] == fv["votes"]
    assert r["factorvae"]["dim_to_factor_name"][1:] == ["scale", "x", None]  # latent 3 is pruned
    plain = disentanglement(codes, f, seed=2)
    assert plain["factor_names"] is None and "per_factor_by_name" not in plain["mig"]
    with pytest.raises(ValueError, match="3 distinct factor names"):
        disentanglement(codes, f, ["a", "b"])
