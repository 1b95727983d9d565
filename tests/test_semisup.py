"""Semi-supervised training: labelled splits, the labelled batch order, every method's step, the run
folder, resume and --init."""

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from replearn.data import load_data
from replearn.data.imageset import ImageSet
from replearn.data.labels import LabelledSplit, check_split, draw_per_class, read_label_csv
from replearn.errors import ReplearnError
from replearn.nn import build_backbone, load_encoder
from replearn.semisup import SEMI, SemiBatch, SemiOptions
from replearn.semisup.base import load_classifier
from replearn.train.run import pretrain
from replearn.train.semisup import semisup, stream_positions

TINY = dict(data="digits", width=8, batch_size=16, mu=2, limit=256, precision="32")
TINY_NO_DATA = dict(width=8, batch_size=16, mu=2, precision="32")


# -- the labelled part -------------------------------------------------------------------------
def test_draw_per_class_is_seeded_and_stratified():
    data = load_data("digits", "train")
    a, b = draw_per_class(data, 4, seed=0), draw_per_class(data, 4, seed=0)
    assert torch.equal(a.index, b.index) and a.per_class().tolist() == [4] * 10
    assert torch.equal(data.labels[a.index], a.labels)  # the data's own labels
    assert not torch.equal(a.index, draw_per_class(data, 4, seed=1).index)
    with pytest.raises(ReplearnError, match="fewer than --labels-per-class"):
        draw_per_class(data.subset(torch.arange(30)), 4, seed=0)


def _write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def test_label_csv_reads_names_and_refuses_bad_rows(tmp_path):
    data = load_data("digits", "train").subset(torch.arange(40))
    ids = data.ids
    # data with classes of its own: labels are those class names, the header row is skipped
    first = [int(torch.nonzero(data.labels == c)[0]) for c in range(10)]
    rows = [["path", "label"]] + [[ids[i], str(c)] for c, i in enumerate(first)]
    ok = read_label_csv(data, _write(tmp_path / "a.csv", rows))
    assert ok.classes == [str(i) for i in range(10)] and ok.index.tolist() == first and ok.labels.tolist() == list(range(10))
    with pytest.raises(ReplearnError, match="no image of class '9'"):  # the data has ten classes
        read_label_csv(data, _write(tmp_path / "a1.csv", rows[:-1]))
    with pytest.raises(ReplearnError, match="not a class of the data"):
        read_label_csv(data, _write(tmp_path / "a2.csv", [[ids[0], "cat"]]))
    # unlabelled data: names become classes in sorted order
    bare = ImageSet(ids=ids, labels=torch.full((40,), -1), name="bare", channels=1, size=8, images=data.images)
    named = read_label_csv(bare, _write(tmp_path / "n.csv", [[ids[0], "dog"], [ids[1], "cat"], [ids[2], "dog"]]))
    assert named.classes == ["cat", "dog"] and named.labels.tolist() == [1, 0, 1]
    with pytest.raises(ReplearnError, match="names no image"):
        read_label_csv(data, _write(tmp_path / "b.csv", [[ids[0], "3"], ["nope.png", "4"]]))
    with pytest.raises(ReplearnError, match="more than once"):
        read_label_csv(data, _write(tmp_path / "c.csv", [[ids[0], "3"], [ids[0], "3"]]))
    with pytest.raises(ReplearnError, match="has no label"):
        read_label_csv(data, _write(tmp_path / "d.csv", [[ids[0], ""]]))
    # integer labels 0 and 2 on unlabelled data: class 1 has no labelled image
    with pytest.raises(ReplearnError, match="no image of class '1'"):
        read_label_csv(bare, _write(tmp_path / "e.csv", [[ids[0], "0"], [ids[1], "2"]]))
    with pytest.raises(ReplearnError, match="3 labels for 10 classes"):
        check_split(LabelledSplit(torch.arange(3), torch.tensor([0, 1, 2]), [str(i) for i in range(10)]))


def test_stream_positions_cover_each_image_once_per_pass_and_split_ranks():
    n, b = 10, 4
    seq = torch.cat([stream_positions(s, b, n, seed=3) for s in range(5)])  # 20 draws = 2 passes
    assert sorted(seq[:10].tolist()) == list(range(10)) and sorted(seq[10:].tolist()) == list(range(10))
    assert seq[:10].tolist() != seq[10:].tolist()  # a new order each pass
    assert torch.equal(stream_positions(3, b, n, seed=3), seq[12:16])  # a function of the step alone
    # two ranks take alternate slices of the same sequence
    r0, r1 = stream_positions(1, b, n, 3, rank=0, world=2), stream_positions(1, b, n, 3, rank=1, world=2)
    assert torch.equal(torch.cat([r0, r1]), seq[8:16])


# -- every method: two steps ----------------------------------------------------------------------
WALK = [(n, {}) for n in SEMI.names()] + [
    ("fixmatch", {"distribution_alignment": True, "adaptive_threshold": True}),
    ("fixmatch", {"contrastive": 1.0, "graph_threshold": 0.5}),
    ("meanteacher", {"student_view": "strong"}),
]


def test_meanteacher_refuses_an_unknown_student_view():
    with pytest.raises(ReplearnError, match="student_view"):
        SEMI.get("meanteacher")(build_backbone("convnet", 1, 8, width=8),
                                SemiOptions(n_classes=10, args={"student_view": "medium"}))


@pytest.mark.parametrize("name,args", WALK)
def test_every_semisup_method_trains_two_steps(name, args):
    torch.manual_seed(0)
    data = load_data("digits", "train")
    method = SEMI.get(name)(build_backbone("convnet", 1, 8, width=8), SemiOptions(n_classes=10, args=args))
    method.bind_labels(data.labels[:16], len(data))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    ema_before = {n: p.detach().clone() for n, p in method.ema.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        method.set_progress(step + 10, 20)  # past the ramp-ups, so the unlabelled terms count
        b = SemiBatch(data.images[:16], data.labels[:16], data.images[16:48], data.mean, data.std, g,
                      torch.arange(16, 48))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step == 1):  # as under --precision bf16
            loss, logs = method.training_step(b)
        assert torch.isfinite(loss) and loss.dtype == torch.float32
        opt.zero_grad()
        loss.backward()
        for n, p in method.named_parameters():
            if not n.startswith("ema."):
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {n} got no gradient"
        assert all(p.grad is None for p in method.ema.parameters()), f"{name}: the EMA model got a gradient"
        opt.step()
        method.after_step()
    assert any(not torch.equal(ema_before[n], p) for n, p in method.ema.named_parameters()), f"{name}: EMA never moves"
    if name == "supervised":  # the baseline: labels only
        assert "pseudo" not in logs and "loss_u" not in logs
        return
    labels, mask = logs["pseudo"]
    assert labels.shape == mask.shape == (32,)
    assert "loss_u" in logs and torch.isfinite(logs["loss_u"])


# -- the run: folder, resume, --init --------------------------------------------------------------
class _Crash(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semisup")
    common = dict(labels_per_class=2, method="pseudolabel", steps=20, method_args={"threshold": 0.5}, **TINY)
    straight = semisup(out=str(tmp / "straight"), **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        semisup(out=str(tmp / "cut"), callbacks=[_Crash()], **common)
    resumed = semisup(out=str(tmp / "cut"), resume=True)
    return tmp, straight, resumed


def test_run_folder_holds_the_classifier_and_the_labels_used(runs):
    _, run, _ = runs
    for name in ("classifier.pt", "encoder.pt", "labels.csv", "config.yaml", "meta.json", "last.ckpt", "metrics.csv"):
        assert (run / name).exists(), name
    lrs = [float(r["lr"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("lr")]
    assert lrs and all(0 < a for a in lrs) and lrs == sorted(lrs, reverse=True)  # the cosine decay, logged
    net, spec, classes = load_classifier(run)
    assert classes == [str(i) for i in range(10)] and spec["method"] == "pseudolabel"
    data = load_data("digits", "train").subset(torch.arange(256))
    rows = list(csv.DictReader(open(run / "labels.csv")))
    assert len(rows) == 20 and [r["id"] for r in rows] == [data.ids[i] for i in draw_per_class(data, 2, 0).index]
    x = (data.images[:8].float() / 255 - data.mean[0]) / data.std[0]
    assert net(x).shape == (8, 10)
    enc, _ = load_encoder(run)  # the EMA model's backbone, for probes and embeddings
    torch.testing.assert_close(enc(x), net.backbone(x))


def test_semisup_resume_equals_uninterrupted(runs):
    _, straight, resumed = runs
    a = torch.load(straight / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 20
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=0, rtol=0, msg=key)


def test_resident_unlabelled_images_train_exactly_as_loaded_batches(runs, tmp_path, monkeypatch):
    """The unlabelled images sliced on the device by the step (the GPU path; on a CPU a view of the
    set) give the same weights as the batches the DataLoader brings."""
    from replearn.train import semisup as loop

    _, straight, _ = runs  # trained with the images resident (the CPU's default)
    monkeypatch.setattr(loop, "resident_images", lambda data, device, free_bytes=None: None)
    loaded = semisup(out=str(tmp_path / "loaded"), labels_per_class=2, method="pseudolabel", steps=20,
                     method_args={"threshold": 0.5}, **TINY)
    a = torch.load(straight / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(loaded / "last.ckpt", weights_only=False)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_init_starts_from_the_pretrained_encoder(runs, tmp_path):
    tmp = runs[0]
    pre = pretrain(out=str(tmp_path / "pre"), data="digits", width=8, batch_size=64, limit=256, epochs=1,
                   knn_monitor=False, precision="32")
    enc, _ = load_encoder(pre)

    class _First(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = {k: v.clone() for k, v in pl_module.method.net.backbone.state_dict().items()}

    first = _First()
    semisup(out=str(tmp_path / "ft"), init=str(pre), labels_per_class=2, method="pseudolabel", steps=2,
            callbacks=[first], **TINY)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(first.start[k], v, atol=0, rtol=0, msg=k)
    with pytest.raises(ReplearnError, match="no labels given"):
        semisup(out=str(tmp_path / "x"), method="pseudolabel", steps=2, **TINY)
    with pytest.raises(ReplearnError, match="already holds a run"):
        semisup(out=str(tmp / "straight"), labels_per_class=2, steps=2, **TINY)


# -- the command line: semisup -> predict -> evaluate ----------------------------------------------
def _cli(*args):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def _one_line_error(code, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_semisup_and_predict_on_folders_end_to_end(tmp_path):
    from imagefactory import make_bad_image_folder, make_class_folder

    train = tmp_path / "train"
    make_class_folder(train, {"cat": 24, "dog": 24}, size=16)
    run = tmp_path / "run"
    common = ["--data", str(train), "--image-size", "16", "--width", "4", "--batch-size", "4", "--mu", "2",
              "--precision", "32", "--method", "pseudolabel"]
    # the user's mistakes: one line each, nothing written
    assert "no labels given" in _one_line_error(*_cli("semisup", *common, "--out", str(run))[::2])
    assert "fewer than --labels-per-class 30" in _one_line_error(
        *_cli("semisup", *common, "--labels-per-class", "30", "--out", str(run))[::2])
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("path,label\ncat/000.png,cat\ndog/000.png,dog\ncat/999.png,cat\n")
    assert "'cat/999.png' names no image" in _one_line_error(
        *_cli("semisup", *common, "--labels", str(bad_csv), "--out", str(run))[::2])
    assert "unknown semi-supervised method" in _one_line_error(
        *_cli("semisup", *common, "--labels-per-class", "2", "--method", "fixmatc", "--out", str(run))[::2])
    assert not run.exists()
    # a run from a label CSV
    bad_csv.write_text("path,label\ncat/000.png,cat\ndog/000.png,dog\ncat/001.png,cat\n")
    code, out, err = _cli("semisup", *common, "--labels", str(bad_csv), "--steps", "4", "--out", str(run))
    assert code == 0, err
    assert "done:" in out and (run / "classifier.pt").exists()
    assert [r["id"] for r in csv.DictReader(open(run / "labels.csv"))] == ["cat/000.png", "dog/000.png", "cat/001.png"]
    # predict on a folder of awkward files: the readable ones get a row, the rest are listed
    new = tmp_path / "new"
    expected = make_bad_image_folder(new)
    preds = tmp_path / "out" / "predictions.csv"
    code, out, err = _cli("predict", str(run), "--data", str(new), "--out", str(preds))
    assert code == 0, err
    rows = list(csv.DictReader(open(preds)))
    assert sorted(r["path"] for r in rows) == sorted(expected["good"])
    assert {r["label"] for r in rows} <= {"cat", "dog"} and all(0.5 <= float(r["confidence"]) <= 1 for r in rows)
    skipped = list(csv.DictReader(open(preds.with_name("predictions.skipped.csv"))))
    assert sorted(r["path"] for r in skipped) == sorted(expected["bad"])
    assert f"skipped {len(expected['bad'])} unreadable image(s)" in out
    assert "no classifier" in _one_line_error(*_cli("predict", str(tmp_path), "--data", str(new))[::2])


def test_evaluate_reports_the_classifiers_own_accuracy(runs):
    from replearn.evaluate.protocol import evaluate
    from replearn.views import eval_view

    _, run, _ = runs
    r = evaluate(str(run), data="digits", few_label=[1], seeds=[0], verbose=False)
    net, spec, classes = load_classifier(run)
    test = load_data("digits", "test")
    with torch.no_grad():
        pred = net(eval_view(test.images, tuple(spec["mean"]), tuple(spec["std"]))).argmax(1)
    by_hand = 100 * (torch.tensor([int(classes[p]) for p in pred]) == test.labels).float().mean().item()
    assert r["accuracy"] == round(by_hand, 2) and "knn" in r and "linear" in r


def test_distribution_alignment_module_keeps_a_running_mean_of_batch_means():
    from replearn.semisup.base import DistributionAlignment

    da = DistributionAlignment(3, window=2)
    da.set_label_marginal(torch.tensor([0, 1, 2, 2]))  # labelled marginal (1/4, 1/4, 1/2)
    first = torch.tensor([[0.5, 0.3, 0.2], [0.7, 0.1, 0.2]])  # batch mean (0.6, 0.2, 0.2)
    # nothing seen yet: the model marginal is taken to be the labelled one, so p passes unchanged
    torch.testing.assert_close(da(first), first)
    second = torch.tensor([[0.2, 0.2, 0.6]])
    # model marginal now (0.6, 0.2, 0.2): p * (1/4, 1/4, 1/2) / (0.6, 0.2, 0.2) = (1/12, 1/4, 3/2), over 11/6
    torch.testing.assert_close(da(second), torch.tensor([[1 / 22, 3 / 22, 18 / 22]]))
    torch.testing.assert_close(da.model_marginal, torch.tensor([0.4, 0.2, 0.4]))  # mean of the two batch means
    da(torch.tensor([[1.0, 0.0, 0.0]]))  # window 2: the first batch mean drops out
    torch.testing.assert_close(da.model_marginal, torch.tensor([0.6, 0.1, 0.3]))
    assert {"history", "seen", "label_marginal"} <= set(da.state_dict())  # checkpoints carry it


def test_remixmatch_rotation_labels_name_the_turn_applied():
    from replearn.semisup.remixmatch import rotation_batch

    x = torch.rand(12, 1, 6, 6)
    rotated, turns = rotation_batch(x, torch.Generator().manual_seed(0))
    assert set(turns.tolist()) == {0, 1, 2, 3}
    for i in range(12):
        torch.testing.assert_close(rotated[i], torch.rot90(x[i], int(turns[i]), dims=(1, 2)), atol=0, rtol=0)
    # a hand case: a single bright pixel at the top-left goes to the bottom-left after one
    # counter-clockwise quarter turn
    one = torch.zeros(1, 1, 3, 3)
    one[0, 0, 0, 0] = 1
    from replearn.views.pretext import rotate

    assert rotate(one, torch.tensor([1]))[0, 0, 2, 0] == 1


def test_ema_warms_up_then_follows_its_momentum():
    method = SEMI.get("pseudolabel")(build_backbone("convnet", 1, 8, width=8), SemiOptions(n_classes=3, ema=0.99))
    start = method.ema.head.weight.detach().clone()
    with torch.no_grad():
        method.net.head.weight.add_(1.0)
    method.set_progress(0, 100)  # after the first step: momentum (1 + 0) / (10 + 0) = 0.1
    method.after_step()
    torch.testing.assert_close(method.ema.head.weight, 0.1 * start + 0.9 * (start + 1.0))
    method.set_progress(5000, 10_000)
    assert method.ema_momentum_now() == 0.99  # the configured momentum once (1 + s) / (10 + s) exceeds it


def test_supervised_baseline_ignores_the_unlabelled_images():
    data = load_data("digits", "train")
    method = SEMI.get("supervised")(build_backbone("convnet", 1, 8, width=8), SemiOptions(n_classes=10))
    losses = []
    for lo in (16, 100):  # two different unlabelled batches, the same labelled one and generator seed
        b = SemiBatch(data.images[:16], data.labels[:16], data.images[lo : lo + 32], data.mean, data.std,
                      torch.Generator().manual_seed(0))
        losses.append(method.training_step(b)[0].item())
    assert losses[0] == losses[1]


def test_labels_from_a_folder_of_class_sub_folders(tmp_path):
    import numpy as np
    from PIL import Image

    from imagefactory import make_class_folder

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # unlabelled images, no sub-folders
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(pool / f"{i:02d}.png")
    labelled = tmp_path / "labelled"
    make_class_folder(labelled, {"cat": 3, "dog": 2}, size=16)
    run = semisup(data=str(pool), labels=str(labelled), image_size=16, method="pseudolabel", steps=2,
                  out=str(tmp_path / "run"), **TINY_NO_DATA)
    rows = list(csv.DictReader(open(run / "labels.csv")))
    assert [r["label"] for r in rows] == ["cat"] * 3 + ["dog"] * 2
    assert all(r["id"].startswith(str(labelled)) for r in rows)
    assert load_classifier(run)[2] == ["cat", "dog"]
    assert json.loads((run / "meta.json").read_text())["images"] == 45  # the labelled ones join the pool
    with pytest.raises(ReplearnError, match="has no class sub-folders"):
        semisup(data=str(pool), labels=str(pool), image_size=16, steps=2, out=str(tmp_path / "x"), **TINY_NO_DATA)


def test_fixmatch_adaptive_thresholds_record_confident_predictions_per_image():
    data = load_data("digits", "train")
    method = SEMI.get("fixmatch")(build_backbone("convnet", 1, 8, width=8),
                                  SemiOptions(n_classes=10, args={"adaptive_threshold": True, "threshold": 0.5}))
    method.bind_labels(data.labels[:16], n_images=100)
    assert method.learned.tolist() == [-1] * 100 and "learned" in method.state_dict()
    p = torch.tensor([[0.9, 0.1] + [0.0] * 8, [0.4, 0.6] + [0.0] * 8, [0.3, 0.3, 0.4] + [0.0] * 7])
    thr = method._threshold(p, torch.tensor([7, 8, 9]))
    assert thr.tolist() == [0.0, 0.0, 0.0]  # nothing learned yet: every class starts at threshold 0
    assert method.learned[7:10].tolist() == [0, 1, -1]  # 0.9 and 0.6 pass the fixed 0.5; 0.4 does not
    # now sigma = (1, 1, 0, ...) against 98 images not learned: beta = 1/98 for classes 0 and 1
    thr = method._threshold(p, torch.tensor([7, 8, 9]))
    b = 1 / 98
    torch.testing.assert_close(thr, torch.tensor([0.5 * b / (2 - b), 0.5 * b / (2 - b), 0.0]))
    b_ = SemiBatch(data.images[:16], data.labels[:16], data.images[16:48], data.mean, data.std,
                   torch.Generator().manual_seed(0), torch.arange(16, 48))
    loss, logs = method.training_step(b_)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("n_classes", [10, 2])
def test_probe_head_predicts_what_the_probe_predicts(n_classes):
    from replearn.evaluate.features import extract_features
    from replearn.evaluate.linear import fit_linear_probe
    from replearn.semisup.base import Classifier
    from replearn.train.semisup import probe_head

    data = load_data("digits", "train")
    split = draw_per_class(data, 5, seed=0)
    if n_classes == 2:  # the labelled images of classes 0 and 1 only
        keep = split.labels < 2
        split = LabelledSplit(split.index[keep], split.labels[keep], ["0", "1"])
    torch.manual_seed(0)
    net = Classifier(build_backbone("convnet", 1, 8, width=8), n_classes).eval()
    probe_head(net, data, split)
    others = data.subset(torch.arange(200))  # images the probe did not see
    feats = extract_features(net.backbone, others).double().numpy()
    probe = fit_linear_probe(extract_features(net.backbone, data.subset(split.index)).double().numpy(),
                             split.labels.numpy(), 0.01)
    expected = torch.from_numpy(probe.decision_function(feats))  # (200, n_classes)
    assert expected.shape == (200, n_classes)
    logits = extract_features(net, others).double()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_probe_head_with_propagated_labels_beats_the_labels_alone():
    """--head-init propagate: 5 labels per class spread along the 10-NN graph of the features to
    all 1,437 digits, and the probe fit on them classifies the unlabelled digits better than the
    probe fit on the 50 labels (features of a fixed random convnet)."""
    from replearn.evaluate.features import extract_features
    from replearn.nn.graph import knn_indices, label_spreading
    from replearn.semisup.base import Classifier
    from replearn.train.semisup import probe_head

    data = load_data("digits", "train")
    split = draw_per_class(data, 5, seed=0)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[split.index] = False
    accs = {}
    for propagate in (False, True):
        torch.manual_seed(0)
        net = Classifier(build_backbone("convnet", 1, 8, width=8), 10).eval()
        probe_head(net, data, split, propagate=propagate)
        pred = extract_features(net, data).argmax(1)
        accs[propagate] = (pred[rest] == data.labels[rest]).float().mean().item()
    # the spreading itself, recomputed: what the propagated probe was fit on
    torch.manual_seed(0)
    feats = extract_features(Classifier(build_backbone("convnet", 1, 8, width=8), 10).backbone, data)
    spread = label_spreading(knn_indices(feats, 10), split.index, split.labels, 10).argmax(1)
    spread_acc = (spread[rest] == data.labels[rest]).float().mean().item()
    assert spread_acc > accs[False] + 0.05, (spread_acc, accs)
    assert accs[True] > accs[False] + 0.03, accs  # measured: 59.7% against 55.4%


def test_fixmatch_cutout_option_reaches_the_strong_view():
    """FixMatch's ``cutout`` argument is the strong view's Cutout size: the view equals the weak
    shift + RandAugment + Cutout of that size drawn from the same generator state, and 0 draws none."""
    from replearn.views import ops, weak_view
    from replearn.views.strong import rand_augment

    data = load_data("digits", "train")
    x = data.images[:32]
    for frac in (0.0, 0.5):
        got = SemiBatch(x, data.labels[:32], x, data.mean, data.std, torch.Generator().manual_seed(3)).strong(x, 2, frac)
        g = torch.Generator().manual_seed(3)
        base = weak_view(x, data.mean, data.std, g, normalize=False)
        want = ops.normalize(rand_augment(base, g, n_ops=2, cutout_frac=frac), data.mean, data.std)
        torch.testing.assert_close(got, want)
    g = torch.Generator().manual_seed(3)
    base = weak_view(x, data.mean, data.std, g, normalize=False)
    no_cut = ops.normalize(rand_augment(base, g, n_ops=2, cutout_frac=0.0), data.mean, data.std)
    assert not torch.equal(got, no_cut)  # the 0.5 view has its squares
    method = SEMI.get("fixmatch")(build_backbone("convnet", 1, 8, width=8), SemiOptions(10, args={"cutout": 0.0}))
    assert method.args.cutout == 0.0


def test_propagated_head_on_a_tiny_dataset():
    """Fewer images than the graph's 10 neighbours: k shrinks instead of failing."""
    from replearn.semisup.base import Classifier
    from replearn.train.semisup import probe_head

    data = load_data("digits", "train").subset(torch.arange(8))
    split = LabelledSplit(torch.tensor([0, 1]), torch.tensor([0, 1]), ["a", "b"])
    net = Classifier(build_backbone("convnet", 1, 8, width=8), 2).eval()
    probe_head(net, data, split, propagate=True)
    assert torch.isfinite(net.head.weight).all()


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs" / "semisup").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_semisup_config_builds_its_method(path):
    from replearn.config import SemiConfig, make_config

    cfg = make_config(SemiConfig, path)
    method = SEMI.get(cfg.method)(build_backbone("convnet", 1, 8, width=8),
                                  SemiOptions(n_classes=10, ema=cfg.ema, args=cfg.method_args))
    assert cfg.steps > 0 and cfg.mu >= 1 and all(getattr(method.args, k) == v for k, v in cfg.method_args.items())


@pytest.mark.parametrize("view,strong_calls", [("weak", 0), ("strong", 1)])
def test_meanteacher_student_view_picks_the_strong_view(monkeypatch, view, strong_calls):
    data = load_data("digits", "train")
    calls = []
    original = SemiBatch.strong
    monkeypatch.setattr(SemiBatch, "strong", lambda self, x, *a, **k: calls.append(len(x)) or original(self, x, *a, **k))
    method = SEMI.get("meanteacher")(build_backbone("convnet", 1, 8, width=8),
                                     SemiOptions(n_classes=10, args={"student_view": view}))
    b = SemiBatch(data.images[:16], data.labels[:16], data.images[16:48], data.mean, data.std,
                  torch.Generator().manual_seed(0))
    method.training_step(b)
    assert calls == [32] * strong_calls  # the 32 unlabelled images, once, and only for the strong student


def test_git_commit_names_the_copied_trees_commit(monkeypatch):
    from replearn.train.run import git_commit

    monkeypatch.setenv("REPLEARN_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_fixmatch_propagated_scores_join_the_weak_prediction():
    data = load_data("digits", "train")
    method = SEMI.get("fixmatch")(build_backbone("convnet", 1, 8, width=8),
                                  SemiOptions(n_classes=10, args={"propagate_every": 5, "threshold": 0.5}))
    method.bind_labels(data.labels[:16], n_images=48)
    assert method.graph_every == 5 and method.graph_p.shape == (48, 10) and "graph_p" in method.state_dict()
    scores = torch.zeros(48, 10)
    scores[:, 3] = 2.0
    scores[:, 4] = 2.0
    scores[40:] = 0.0  # rows the labels never reached
    method.set_graph_scores(scores)
    torch.testing.assert_close(method.graph_p[0], torch.tensor([0, 0, 0, 0.5, 0.5, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(method.graph_p[45], torch.full((10,), 0.1))
    scores[:40, 4] = 0.0  # now every reached image is class 3 for sure
    method.set_graph_scores(scores)
    with torch.no_grad():  # the model itself says 0.1 for every class: the target is (0.1 + 1) / 2 = 0.55
        method.net.head.weight.zero_()
        method.net.head.bias.zero_()
    b = SemiBatch(data.images[:16], data.labels[:16], data.images[16:48], data.mean, data.std,
                  torch.Generator().manual_seed(0), torch.arange(16, 48))
    _, logs = method.training_step(b)
    labels, mask = logs["pseudo"]
    assert labels[:24].tolist() == [3] * 24 and mask[:24].tolist() == [1.0] * 24  # images 16..39: 0.55 >= 0.5
    assert mask[24:].tolist() == [0.0] * 8  # images 40..47: (0.1 + 0.1) / 2 everywhere


def test_fixmatch_propagation_refreshes_during_a_run(tmp_path):
    out = semisup(out=str(tmp_path / "prop"), labels_per_class=2, method="fixmatch", steps=4,
                  method_args={"propagate_every": 2, "threshold": 0.5}, **TINY)
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    graph_p = state["method.graph_p"]
    assert graph_p.shape == (256, 10)
    torch.testing.assert_close(graph_p.sum(1), torch.ones(256))
    assert (graph_p.max(1).values > 0.1).any()  # spread from the labels, not all uniform
