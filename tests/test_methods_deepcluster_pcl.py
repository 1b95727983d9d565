"""DeepCluster and PCL: k-means, concentration and ProtoNCE against references; clusters refresh
each epoch in a real run, and a resumed DeepCluster run equals an uninterrupted one."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replearn.losses.proto import proto_nce
from replearn.methods import METHODS, MethodOptions
from replearn.nn import build_backbone
from replearn.nn.cluster import concentration, kmeans, pca_whiten
from replearn.train.run import pretrain

TINY = dict(data="digits", backbone="convnet", width=8, batch_size=64, limit=256, knn_monitor=False, precision="32")


def _blobs(n_per=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.5 * torch.randn(n_per, 2, generator=g) for c in centres])
    return x, torch.arange(3).repeat_interleave(n_per)


def _means(x, assign, k):
    return torch.stack([x[assign == j].mean(0) for j in range(k)])


# -- k-means ------------------------------------------------------------------------------------
def test_kmeans_is_seeded_and_finds_separated_blobs():
    x, truth = _blobs()
    c, a = kmeans(x, 3, seed=0)
    c2, a2 = kmeans(x, 3, seed=0)
    assert torch.equal(c, c2) and torch.equal(a, a2)  # same seed, same result
    assert len({(int(t), int(p)) for t, p in zip(truth, a, strict=True)}) == 3  # blobs = clusters (a bijection)
    torch.testing.assert_close(c, _means(x, a, 3))
    noise = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(kmeans(noise, 20, seed=0)[1], kmeans(noise, 20, seed=1)[1])  # the seed matters


def test_kmeans_reseeds_an_empty_cluster_by_splitting_one():
    x, _ = _blobs()
    # centroid 1 is far from every point: empty after the first assignment; without the split it
    # would stay at (100, 100) with no points, and centroid 0 would hold all 90 points
    init = torch.tensor([[3.0, 3.0], [100.0, 100.0]])
    c, a = kmeans(x, 2, seed=0, n_iter=1, init=init)
    counts = torch.bincount(a, minlength=2)
    assert (counts > 0).all() and counts.sum() == 90
    assert c[1].norm() < 20  # moved next to the data
    torch.testing.assert_close(c, _means(x, a, 2))


def test_kmeans_with_more_clusters_than_distinct_points_leaves_none_empty():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat_interleave(10, 0)  # 2 distinct points, 20 rows
    c, a = kmeans(x, 4, seed=3)
    assert (torch.bincount(a, minlength=4) > 0).all()
    torch.testing.assert_close(c, _means(x, a, 4))
    with pytest.raises(ValueError, match="at least k=30"):
        kmeans(x, 30, seed=0)


def test_pca_whiten_gives_unit_covariance_on_the_top_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0
    w = pca_whiten(x, 4)
    assert w.shape == (2000, 4)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(4), atol=1e-3, rtol=0)


# -- concentration ------------------------------------------------------------------------------
def test_concentration_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]  # cluster 0 holds one point: it takes the largest phi
    assign = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    x = torch.randn(len(assign), 5, generator=g) * (1 + assign[:, None].float())  # spreads differ
    centroids = _means(x, assign, len(sizes))
    t, alpha = 0.2, 10.0
    phi = []
    for j, z in enumerate(sizes):  # eq. 12 written out, in float64
        d = [float((x[i].double() - centroids[j].double()).norm()) for i in range(len(x)) if assign[i] == j]
        phi.append(sum(d) / (z * math.log(z + alpha)) if z > 1 else None)
    phi = np.array([p if p is not None else max(p for p in phi if p is not None) for p in phi])
    phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    ref = t * phi / phi.mean()
    got = concentration(x, centroids, assign, t, alpha)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    assert abs(got.mean().item() - t) < 1e-6


# -- ProtoNCE -----------------------------------------------------------------------------------
def _unit(v):
    return v.double() / v.double().norm()


def naive_proto_nce(q, k, queue, t, protos, assigns, phis):
    """Eq. 11 of the PCL paper, one query at a time, in float64."""
    unit = _unit
    total = 0.0
    for i in range(len(q)):
        qi = unit(q[i])
        pos = math.exp(float(qi @ unit(k[i])) / t)
        neg = sum(math.exp(float(qi @ unit(n)) / t) for n in queue)
        loss = -math.log(pos / (pos + neg))
        terms = []
        for c, s, phi in zip(protos, assigns, phis, strict=True):
            e = [math.exp(float(qi @ unit(c[j])) / float(phi[j])) for j in range(len(c))]
            terms.append(-math.log(e[int(s[i])] / sum(e)))
        total += loss + (sum(terms) / len(terms) if terms else 0.0)
    return total / len(q)


@pytest.mark.parametrize("m", [0, 1, 3])
def test_proto_nce_matches_naive_loop(m):
    g = torch.Generator().manual_seed(m)
    n, p, kq, t = 6, 5, 9, 0.2
    q, k, queue = torch.randn(n, p, generator=g), torch.randn(n, p, generator=g), torch.randn(kq, p, generator=g)
    sizes = [3, 4, 7][:m]
    protos = [torch.randn(s, p, generator=g) for s in sizes]
    assigns = [torch.randint(0, s, (n,), generator=g) for s in sizes]
    phis = [0.05 + 0.3 * torch.rand(s, generator=g) for s in sizes]
    got = proto_nce(q, k, queue, t, protos, assigns, phis).item()
    assert abs(got - naive_proto_nce(q, k, queue, t, protos, assigns, phis)) < 1e-5


def test_proto_nce_closed_forms_and_float32():
    # q = k and the queue orthogonal to q: instance term = log(1 + K exp(-1/T))
    q = torch.eye(4)[:2]
    queue = torch.eye(4)[2:].repeat(3, 1)  # K = 6 keys orthogonal to both queries
    t = 0.5
    inst = math.log(1 + 6 * math.exp(-1 / t))
    assert abs(proto_nce(q, q, queue, t).item() - inst) < 1e-6
    # k_m identical prototypes with one phi: the prototype term is log(k_m), averaged over clusterings
    protos = [torch.ones(3, 4), torch.ones(5, 4)]
    assigns = [torch.tensor([0, 2]), torch.tensor([4, 1])]
    phis = [torch.full((3,), 0.1), torch.full((5,), 0.3)]
    got = proto_nce(q, q, queue, t, protos, assigns, phis).item()
    assert abs(got - (inst + (math.log(3) + math.log(5)) / 2)) < 1e-5
    assert proto_nce(q.bfloat16(), q.bfloat16(), queue.bfloat16(), t).dtype == torch.float32


# -- the methods in the trainer ---------------------------------------------------------------
class _Record(pl.Callback):
    """The method's cluster state at each epoch start (after the trainer's clustering)."""

    def __init__(self):
        self.starts, self.ends = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts.append({k: v.detach().clone() for k, v in pl_module.method.state_dict().items()})
        self.starts[-1]["weights"] = pl_module.method.sample_weights()
        state = trainer.optimizers[0].state  # which parameters carry optimiser moments into this epoch
        self.starts[-1]["has_moments"] = {n: p in state for n, p in pl_module.method.named_parameters()}

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append({k: v.detach().clone() for k, v in pl_module.method.state_dict().items()})


def test_pcl_clusters_at_several_granularities_each_epoch(tmp_path):
    rec = _Record()
    args = {"n_clusters": [4, 8], "warmup_epochs": 0, "queue_size": 128}
    pretrain(out=str(tmp_path / "run"), epochs=2, method="pcl", method_args=args, callbacks=[rec], **TINY)
    s0, s1 = rec.starts
    assert int(s0["clustered_for"]) == 0 and int(s1["clustered_for"]) == 1
    for m, k in enumerate([4, 8]):
        assert not torch.equal(s0[f"assign{m}"], s1[f"assign{m}"])
        assert set(s1[f"assign{m}"].tolist()) == set(range(k))
        torch.testing.assert_close(s1[f"prototypes{m}"].norm(dim=1), torch.ones(k))
        assert abs(s1[f"concentration{m}"].mean().item() - 0.2) < 1e-5  # mean phi = temperature
    assert s1["weights"] is None


def test_pcl_skips_clustering_during_warmup():
    method = METHODS.get("pcl")(build_backbone("convnet", 1, 8, width=8), MethodOptions(args={"n_clusters": [4]}))
    method.set_progress(0, 10, 0, 2)  # epoch 0 < warmup_epochs = 1
    method.on_dataset_features(F.normalize(torch.randn(50, 128), dim=1))
    assert int(method.clustered_for) == -1


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


DC_ARGS = {"n_clusters": 8, "pca_dim": 16}


@pytest.fixture(scope="module")
def deepcluster_runs(tmp_path_factory):
    """A 2-epoch DeepCluster run, and the same run cut after epoch 0 then resumed (recorded)."""
    tmp = tmp_path_factory.mktemp("deepcluster")
    common = dict(epochs=2, method="deepcluster", method_args=DC_ARGS, **TINY)
    straight, resumed = _Record(), _Record()
    a = pretrain(out=str(tmp / "straight"), callbacks=[straight], **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(out=str(tmp / "cut"), callbacks=[_StopAfterFirstEpoch()], **common)
    b = pretrain(out=str(tmp / "cut"), resume=True, callbacks=[resumed])
    return straight, resumed, a, b


def test_deepcluster_reclusters_and_redraws_its_head_each_epoch(deepcluster_runs):
    rec = deepcluster_runs[0]
    s0, s1 = rec.starts
    assert int(s0["clustered_for"]) == 0 and int(s1["clustered_for"]) == 1
    assert len(s0["labels"]) == 256 and set(s0["labels"].tolist()) == set(range(8))
    assert not torch.equal(s0["labels"], s1["labels"])  # new pseudo-labels for epoch 1
    sizes = torch.bincount(s1["labels"], minlength=8).double()
    torch.testing.assert_close(s1["weights"], 1 / sizes[s1["labels"]])  # uniform over pseudo-classes
    fresh = METHODS.get("deepcluster")(build_backbone("convnet", 1, 8, width=8), MethodOptions(args=DC_ARGS))
    fresh._reset_head(1)
    assert not torch.equal(rec.ends[0]["head.weight"], s1["head.weight"])  # trained head thrown away ...
    torch.testing.assert_close(s1["head.weight"], fresh.head.weight.detach(), atol=0, rtol=0)  # ... redrawn
    assert (s1["head.bias"] == 0).all()
    # the redrawn head starts epoch 1 without AdamW moments; the backbone keeps its own
    moments = s1["has_moments"]
    assert not moments["head.weight"] and not moments["head.bias"]
    assert all(has for n, has in moments.items() if n.startswith("backbone."))
    assert not any(s0["has_moments"].values())  # nothing stepped before epoch 0


def test_deepcluster_resume_equals_uninterrupted(deepcluster_runs):
    rec_straight, rec_resumed, straight, resumed = deepcluster_runs
    # the resumed run re-clusters for epoch 1 exactly as the uninterrupted one did
    a, b = rec_straight.starts[1], rec_resumed.starts[0]
    for key in ("labels", "clustered_for", "head.weight", "weights"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    wa = torch.load(straight / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(resumed / "last.ckpt", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0, msg=key)
