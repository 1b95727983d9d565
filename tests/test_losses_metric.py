"""Metric-learning losses against naive float64 loops, hand-made mining cases, closed forms and
ArcFace's worked angles; SupCon as nt_xent with class labels."""

import math

import pytest
import torch

from replearn.losses import (
    arcface_loss,
    contrastive_margin_loss,
    margin_logits,
    mine_triplets,
    nt_xent,
    pairwise_distances,
    ranked_list_loss,
    triplet_loss,
)

TOL = 1e-5
SEEDS = [0, 1, 2]
# several members per class, and a singleton class (an anchor without positives)
LABELS = [
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],
    [0, 1, 0, 2, 1, 0, 2, 3, 1, 0, 2, 4],
]


def batch(seed, labels, dim=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=g), torch.tensor(labels)


# -- float64 references, written out element by element ------------------------------------------


def unit_rows(z):
    rows = z.double().tolist()
    return [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in rows]


def naive_dist(z):
    u = unit_rows(z)
    return [[math.dist(a, b) for b in u] for a in u]


def mean_or_zero(xs):
    return sum(xs) / len(xs) if xs else 0.0


def positives(lab, a):
    return [p for p in range(len(lab)) if p != a and lab[p] == lab[a]]


def negatives(lab, a):
    return [q for q in range(len(lab)) if lab[q] != lab[a]]


def naive_contrastive(z, labels, margin):
    d, lab = naive_dist(z), labels.tolist()
    pos, neg = [], []
    for i in range(len(lab)):
        for j in range(i + 1, len(lab)):
            if lab[i] == lab[j]:
                pos.append(d[i][j] ** 2)
            else:
                neg.append(max(0.0, margin - d[i][j]) ** 2)
    return mean_or_zero(pos) + mean_or_zero(neg)


def naive_triplet(z, labels, margin, mining):
    d, lab = naive_dist(z), labels.tolist()
    terms = []
    for a in range(len(lab)):
        ps, ns = positives(lab, a), negatives(lab, a)
        if mining == "all":
            terms += [max(0.0, d[a][p] - d[a][q] + margin) for p in ps for q in ns]
        elif mining == "hard" and ps and ns:
            terms.append(max(0.0, max(d[a][p] for p in ps) - min(d[a][q] for q in ns) + margin))
        elif mining == "semihard" and ns:
            for p in ps:
                semi = [d[a][q] for q in ns if d[a][q] > d[a][p]]
                d_an = min(semi) if semi else max(d[a][q] for q in ns)
                terms.append(max(0.0, d[a][p] - d_an + margin))
    if mining == "all":
        terms = [t for t in terms if t > 0]
    return mean_or_zero(terms)


def naive_ranked_list(z, labels, alpha, margin, t_n, lam):
    d, lab = naive_dist(z), labels.tolist()
    total = 0.0
    for i in range(len(lab)):
        l_p = mean_or_zero([d[i][j] - (alpha - margin) for j in positives(lab, i) if d[i][j] > alpha - margin])
        ns = [j for j in negatives(lab, i) if d[i][j] < alpha]
        w = [math.exp(t_n * (alpha - d[i][j])) for j in ns]
        l_n = sum(wj * (alpha - d[i][j]) for wj, j in zip(w, ns, strict=True)) / sum(w) if ns else 0.0
        total += l_p + lam * l_n
    return total / len(lab)


def naive_target_logit(c, margin, kind):
    """The target's margin cosine from the angle: arccos, add m, and the documented fallback."""
    if kind == "cosface":
        return c - margin
    theta = math.acos(max(-1.0, min(1.0, c)))
    return math.cos(theta + margin) if theta + margin <= math.pi else c - (1 - math.cos(margin))


def naive_arcface(z, weight, labels, scale, margin, kind):
    u, w, lab = unit_rows(z), unit_rows(weight), labels.tolist()
    total = 0.0
    for i, y in enumerate(lab):
        cos = [sum(a * b for a, b in zip(u[i], wc, strict=True)) for wc in w]
        logits = [scale * (naive_target_logit(c, margin, kind) if k == y else c) for k, c in enumerate(cos)]
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[y]
    return total / len(lab)


# -- distances ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_pairwise_distances_match_naive_loop_and_float64_gradient(seed):
    z, _ = batch(seed, LABELS[0])
    z = z * torch.linspace(0.5, 3, len(z))[:, None]  # unnormalised rows: the function normalises
    d = pairwise_distances(z)
    torch.testing.assert_close(d.double(), torch.tensor(naive_dist(z), dtype=torch.float64), atol=TOL, rtol=0)
    assert torch.all(d.diagonal() == 0)
    # gradient of a weighted sum off the diagonal, against float64 autograd of ||u_i - u_j||
    g = torch.Generator().manual_seed(seed + 100)
    coef = torch.rand(len(z), len(z), generator=g, dtype=torch.float64).fill_diagonal_(0)
    z1 = z.clone().requires_grad_(True)
    (pairwise_distances(z1).double() * coef).sum().backward()
    z2 = z.double().requires_grad_(True)
    u = z2 / z2.norm(dim=1, keepdim=True)
    n = len(z)
    sum(coef[i, j] * (u[i] - u[j]).norm() for i in range(n) for j in range(n) if i != j).backward()
    torch.testing.assert_close(z1.grad.double(), z2.grad, atol=1e-4, rtol=1e-4)


# -- contrastive margin loss --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("margin", [0.5, 1.5])
def test_contrastive_margin_matches_naive_loop(seed, labels, margin):
    z, lab = batch(seed, labels)
    assert abs(contrastive_margin_loss(z, lab, margin).item() - naive_contrastive(z, lab, margin)) < TOL


def test_contrastive_margin_closed_forms():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # two identical positives: d = 0, and no negative pair
    assert contrastive_margin_loss(torch.cat([x, 2 * x]), torch.tensor([0, 0])).item() == 0.0
    # two identical negatives: (margin - 0)^2, and no positive pair
    assert abs(contrastive_margin_loss(torch.cat([x, x]), torch.tensor([0, 1]), 0.7).item() - 0.49) < 1e-6
    # orthogonal pair: d = sqrt(2); a positive costs 2, a negative beyond the margin costs 0
    e = torch.eye(2)
    assert abs(contrastive_margin_loss(e, torch.tensor([0, 0])).item() - 2.0) < 1e-6
    assert contrastive_margin_loss(e, torch.tensor([0, 1]), margin=1.0).item() == 0.0


# -- triplet mining on a hand-made case ---------------------------------------------------------------


def circle(degrees):
    t = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([t.cos(), t.sin()], 1).float()


# points on the unit circle: the chord grows with the angle between points, so the mining can be
# read off the angles. Separations: 0-1 20, 0-2 50, 0-3 30, 0-4 105, 0-5 160, 1-2 30, 1-3 10, 1-4 85,
# 1-5 180, 2-3 20, 2-4 55, 2-5 150, 3-4 75, 3-5 170, 4-5 95 degrees. Point 5 has no positive.
HAND_Z = circle([0, 20, 50, 30, 105, 200])
HAND_LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def triplets(a, p, n):
    return list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))


def test_mining_hard_on_hand_made_case():
    got = triplets(*mine_triplets(pairwise_distances(HAND_Z), HAND_LABELS, "hard"))
    # anchor 0: positives 1 (20), 2 (50) -> 2; negatives 3 (30), 4 (105), 5 (160) -> 3
    # anchor 1: positives 0 (20), 2 (30) -> 2; negatives 3 (10) ... -> 3
    # anchor 2: positives 0 (50), 1 (30) -> 0; negatives 3 (20), 4 (55), 5 (150) -> 3
    # anchor 3: positive 4; negatives 0 (30), 1 (10), 2 (20), 5 (170) -> 1
    # anchor 4: positive 3; negatives 0 (105), 1 (85), 2 (55), 5 (95) -> 2; anchor 5: no positive
    assert got == [(0, 2, 3), (1, 2, 3), (2, 0, 3), (3, 4, 1), (4, 3, 2)]


def test_mining_semihard_on_hand_made_case():
    got = triplets(*mine_triplets(pairwise_distances(HAND_Z), HAND_LABELS, "semihard"))
    # the nearest negative farther than the positive, per (anchor, positive):
    # (0,1) d_ap 20: 3 (30); (0,2) d_ap 50: 4 (105); (1,0) d_ap 20: 4 (85), not 3 (10);
    # (1,2) d_ap 30: 4 (85); (2,0) d_ap 50: 4 (55); (2,1) d_ap 30: 4 (55), not 3 (20);
    # (3,4) d_ap 75: 5 (170); (4,3) d_ap 75: 1 (85), not 2 (55) nor 5 (95)
    assert got == [(0, 1, 3), (0, 2, 4), (1, 0, 4), (1, 2, 4), (2, 0, 4), (2, 1, 4), (3, 4, 5), (4, 3, 1)]


def test_mining_semihard_falls_back_to_the_farthest_negative():
    # class 0 at 0 and 90 degrees, class 1 at 30 and 55. Pair (0,1), d_ap 90: negatives 30 and 55
    # away, both nearer: the farthest, 3. Pair (1,0): negatives 60 (point 2) and 35 away: 2.
    # Pair (2,3), d_ap 25: negatives 30 (point 0) and 60 away: semi-hard 0. Pair (3,2): 55 and
    # 35 (point 1) away: semi-hard 1.
    z, lab = circle([0, 90, 30, 55]), torch.tensor([0, 0, 1, 1])
    got = triplets(*mine_triplets(pairwise_distances(z), lab, "semihard"))
    assert got == [(0, 1, 3), (1, 0, 2), (2, 3, 0), (3, 2, 1)]
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    terms = [chord(90) - chord(55), chord(90) - chord(60), chord(25) - chord(30), chord(25) - chord(35)]
    want = sum(max(0.0, t + 0.2) for t in terms) / 4
    assert abs(triplet_loss(z, lab, margin=0.2, mining="semihard").item() - want) < 1e-6


def test_mining_all_is_every_valid_triplet():
    got = triplets(*mine_triplets(pairwise_distances(HAND_Z), HAND_LABELS, "all"))
    lab = HAND_LABELS.tolist()
    want = [(a, p, n) for a in range(6) for p in positives(lab, a) for n in negatives(lab, a)]
    assert got == want and len(got) == 26


def test_unknown_mining_names_the_valid_ones():
    with pytest.raises(ValueError, match="'hardest'.*all, hard, semihard"):
        triplet_loss(HAND_Z, HAND_LABELS, mining="hardest")
    with pytest.raises(ValueError, match="all, hard, semihard"):
        mine_triplets(pairwise_distances(HAND_Z), HAND_LABELS, "batch-all")


# -- triplet loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_naive_loop(seed, labels, mining, margin):
    z, lab = batch(seed, labels)
    got = triplet_loss(z, lab, margin, mining).item()
    assert abs(got - naive_triplet(z, lab, margin, mining)) < TOL


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_closed_forms(mining):
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # anchor 0 deg, positive 30, negative 90: d_an - d_ap = 0.897 >= margin 0.2 for every triplet
    z, lab = circle([0, 30, 90]), torch.tensor([0, 0, 1])
    assert triplet_loss(z, lab, 0.2, mining).item() == 0.0
    # positive 60 deg away, negative 40 deg away: one violating triplet per anchor (0 and 1)
    z = circle([0, 60, -40])
    want = chord(60) - chord(40) + 0.2  # anchor 0
    # anchor 1: negative 100 deg away; loss only if chord(60) - chord(100) + 0.2 > 0 (it is not)
    assert chord(60) - chord(100) + 0.2 < 0
    n_active = {"all": 1, "hard": 2, "semihard": 2}[mining]
    assert abs(triplet_loss(z, lab, 0.2, mining).item() - want / n_active) < 1e-6


# -- ranked list loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize(("alpha", "margin", "t_n", "lam"), [(1.2, 0.4, 10.0, 1.0), (1.0, 0.6, 3.0, 0.5)])
def test_ranked_list_matches_naive_loop(seed, labels, alpha, margin, t_n, lam):
    z, lab = batch(seed, labels)
    got = ranked_list_loss(z, lab, alpha, margin, t_n, lam).item()
    assert abs(got - naive_ranked_list(z, lab, alpha, margin, t_n, lam)) < TOL


def test_ranked_list_closed_form():
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # 0 and 1 positives 90 deg apart (d 1.414 > alpha - m = 0.8); negative 2 at 30 deg from 0 and
    # 120 from 1 (d 0.518 < alpha = 1.2, 1.732 > alpha)
    z, lab = circle([0, 90, -30]), torch.tensor([0, 0, 1])
    alpha, m = 1.2, 0.4
    l0 = (chord(90) - (alpha - m)) + (alpha - chord(30))  # one violating negative: its weight cancels
    l1 = chord(90) - (alpha - m)
    l2 = alpha - chord(30)  # anchor 2: no positive; negatives 0 (violating), 1 (not)
    assert abs(ranked_list_loss(z, lab, alpha, m).item() - (l0 + l1 + l2) / 3) < 1e-6


def test_ranked_list_weights_are_constants_in_the_gradient():
    z, lab = batch(5, LABELS[0], dim=3)
    alpha, m, t_n = 1.2, 0.4, 10.0
    z1 = z.clone().requires_grad_(True)
    ranked_list_loss(z1, lab, alpha, m, t_n).backward()

    def reference_grad(detach):
        z2 = z.double().requires_grad_(True)
        u = z2 / z2.norm(dim=1, keepdim=True)
        lab_ = lab.tolist()
        total = 0
        for i in range(len(lab_)):
            dp = [(u[i] - u[j]).norm() for j in positives(lab_, i)]
            dp = [x for x in dp if x > alpha - m]
            dn = [x for x in ((u[i] - u[j]).norm() for j in negatives(lab_, i)) if x < alpha]
            if dp:
                total = total + sum(x - (alpha - m) for x in dp) / len(dp)
            if dn:
                w = [torch.exp(t_n * (alpha - x)) for x in dn]
                w = [x.detach() for x in w] if detach else w
                total = total + sum(wj * (alpha - x) for wj, x in zip(w, dn, strict=True)) / sum(w)
        (total / len(lab_)).backward()
        return z2.grad

    want = reference_grad(detach=True)
    torch.testing.assert_close(z1.grad.double(), want, atol=1e-5, rtol=1e-4)
    # the detach matters on this batch: differentiating through the weights gives another gradient
    assert (reference_grad(detach=False) - want).abs().max() > 1e-3


# -- ArcFace / CosFace -----------------------------------------------------------------------------


def test_margin_logits_at_known_angles():
    s, m = 30.0, 0.5
    theta = torch.tensor([60.0, 100.0, 20.0]) * math.pi / 180
    cos = theta.cos()[None, :].repeat(3, 1)  # (3, 3): each row the same three angles
    labels = torch.tensor([0, 1, 2])
    arc = margin_logits(cos, labels, s, m, "arcface")
    cosf = margin_logits(cos, labels, s, m, "cosface")
    assert abs(arc[0, 0].item() - s * math.cos(math.pi / 3 + m)) < 1e-4
    assert abs(cosf[0, 0].item() - s * (0.5 - m)) < 1e-4
    assert abs(arc[1, 1].item() - s * math.cos(math.radians(100) + m)) < 1e-4
    off_target = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(arc[off_target], s * cos[off_target])
    torch.testing.assert_close(cosf[off_target], s * cos[off_target])


def test_margin_logits_fallback_past_pi():
    s, m = 30.0, 0.5
    c = math.cos(math.radians(170))  # theta + m = 3.47 > pi
    got = margin_logits(torch.tensor([[c, 0.3]]), torch.tensor([0]), s, m, "arcface")[0, 0].item()
    assert abs(got - s * (c - (1 - math.cos(m)))) < 1e-4
    assert got < s * -1  # still below every cos(theta + m) of the regular branch


@pytest.mark.parametrize("m", [0.3, 0.5, 1.0])
def test_arcface_target_logit_is_monotone_and_continuous_in_theta(m):
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    cos = theta.cos().float()[:, None]  # (T, 1): one class, the target
    target = margin_logits(cos, torch.zeros(len(theta), dtype=torch.long), 1.0, m)[:, 0]
    step = target.diff()
    assert torch.all(step <= 1e-6)  # non-increasing in theta
    # slope |d/dtheta| <= 1 on both branches: no jump larger than a grid step (InsightFace's
    # cos - m sin m fallback would jump by cos m + m sin m - 1 > 0.04 here)
    assert step.abs().max() <= math.pi / 4000 + 1e-5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["arcface", "cosface"])
@pytest.mark.parametrize(("scale", "margin"), [(30.0, 0.5), (8.0, 1.2)])
def test_arcface_loss_matches_naive_loop(seed, kind, scale, margin):
    g = torch.Generator().manual_seed(seed)
    z, weight = torch.randn(10, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.randint(0, 5, (10,), generator=g)
    weight[labels[0]] = -z[0]  # one target at theta = pi: the fallback branch
    got = arcface_loss(z, weight, labels, scale, margin, kind).item()
    want = naive_arcface(z, weight, labels, scale, margin, kind)
    assert abs(got - want) < TOL * max(1.0, abs(want))


def test_unknown_margin_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match="'sphereface'.*arcface, cosface"):
        margin_logits(torch.zeros(2, 3), torch.tensor([0, 1]), kind="sphereface")


# -- SupCon is nt_xent with class labels -------------------------------------------------------------


def naive_sim(z, t):
    u = unit_rows(z)
    return [[sum(a * b for a, b in zip(x, y, strict=True)) / t for y in u] for x in u]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_with_one_positive_per_anchor_is_simclr_nt_xent(seed, t):
    n = 6
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, 5, generator=g)
    labels = torch.arange(n).repeat(2)[torch.randperm(2 * n, generator=g)]  # each label twice
    s, lab = naive_sim(z, t), labels.tolist()
    total = 0.0
    for i in range(2 * n):
        (j,) = [k for k in range(2 * n) if k != i and lab[k] == lab[i]]  # the other view
        total += -math.log(math.exp(s[i][j]) / sum(math.exp(s[i][k]) for k in range(2 * n) if k != i))
    assert abs(nt_xent(z, labels, t, gather=False).item() - total / (2 * n)) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_matches_khosla_l_out_loop(seed):
    t = 0.2
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1])
    z, _ = batch(seed, labels.tolist(), dim=6)
    s, lab = naive_sim(z, t), labels.tolist()
    total = 0.0
    for i in range(len(lab)):
        denom = sum(math.exp(s[i][a]) for a in range(len(lab)) if a != i)
        ps = positives(lab, i)
        total += -sum(math.log(math.exp(s[i][p]) / denom) for p in ps) / len(ps)
    assert abs(nt_xent(z, labels, t, gather=False).item() - total / len(lab)) < TOL


# -- gradients with coinciding embeddings ----------------------------------------------------------


LOSSES = {
    "contrastive": lambda z, lab: contrastive_margin_loss(z, lab),
    "triplet-all": lambda z, lab: triplet_loss(z, lab, mining="all"),
    "triplet-hard": lambda z, lab: triplet_loss(z, lab, mining="hard"),
    "triplet-semihard": lambda z, lab: triplet_loss(z, lab, mining="semihard"),
    "ranked-list": lambda z, lab: ranked_list_loss(z, lab),
    "arcface": lambda z, lab: arcface_loss(z, z[:4].detach(), lab % 4),
    "cosface": lambda z, lab: arcface_loss(z, z[:4].detach(), lab % 4, kind="cosface"),
    "distances": lambda z, lab: pairwise_distances(z).sum(),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["duplicates", "all-identical"])
def test_gradients_are_finite_with_duplicate_embeddings(name, case):
    z, lab = batch(3, [0, 0, 1, 1, 0, 2, 2, 3])
    if case == "duplicates":
        z[1] = z[0]  # a positive pair at distance 0
        z[3] = z[0]  # a negative at distance 0
        z[6] = 3 * z[5]  # the same point after normalisation
    else:
        z[:] = z[0]
    z.requires_grad_(True)
    loss = LOSSES[name](z, lab)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_logits_gradient_finite_at_cos_plus_minus_one(kind):
    cos = torch.tensor([[1.0, 0.2], [0.1, -1.0], [-1.0, 1.0]], requires_grad=True)
    logits = margin_logits(cos, torch.tensor([0, 1, 0]), kind=kind)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(cos.grad).all()
    if kind == "arcface":  # exact values at theta = 0 and theta = pi (fallback), no clamping error
        assert abs(logits[0, 0].item() - 30 * math.cos(0.5)) < 1e-5
        assert abs(logits[1, 1].item() - 30 * (-1 - (1 - math.cos(0.5)))) < 1e-5


def test_losses_compute_in_float32():
    z, lab = batch(0, LABELS[0])
    for name, fn in LOSSES.items():
        assert fn(z.bfloat16(), lab).dtype == torch.float32, name
        assert fn(z.double(), lab).dtype == torch.float32, name
