"""replearn metric: class-balanced batches, every loss trains, held-out classes, resume, bad input."""

import csv
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from replearn.cli.main import main
from replearn.errors import ReplearnError
from replearn.methods.base import MethodOptions
from replearn.methods.metric import METRIC_LOSSES, MetricLearner
from replearn.nn import build_backbone, load_encoder
from replearn.train.metric import metric
from replearn.train.module import ClassBalancedSampler

TINY = dict(data="digits", width=4, epochs=1, classes_per_batch=4, images_per_class=4, knn_monitor=False,
            precision="32", proj_hidden=16, proj_dim=8)


def _batches(sampler, size):
    idx = list(sampler)
    assert len(idx) == len(sampler) and len(idx) % size == 0
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def test_class_balanced_batches_hold_p_classes_of_k_images():
    labels = torch.tensor([0] * 7 + [1] * 9 + [2] * 3 + [3] * 12 + [-1] * 5)  # class 2 has fewer than K
    s = ClassBalancedSampler(labels, classes_per_batch=3, images_per_class=4, seed=0)
    assert len(s) == (31 // 12) * 12  # batches = labelled images // (P*K); unlabelled ones never drawn
    for batch in _batches(s, 12):
        y = labels[batch]
        assert (y >= 0).all()
        classes, counts = torch.unique(y, return_counts=True)
        assert len(classes) == 3 and (counts == 4).all()  # P distinct classes, K images each
        for c in classes.tolist():  # a class repeats an image only when it has fewer than K, or it reshuffles
            members = [i for i in batch if labels[i] == c]
            if c != 2:
                assert len(set(members)) >= 3
    # every image of a class comes round before any comes twice (one class, many batches)
    one = ClassBalancedSampler(torch.tensor([0] * 8 + [1] * 8), 2, 4, seed=3)
    seen0 = [i for i in list(one) if i < 8]
    assert sorted(seen0[:8]) == list(range(8))


def test_class_balanced_order_is_a_function_of_seed_and_epoch_and_ranks_split_it():
    labels = torch.arange(40) % 5
    a, b = ClassBalancedSampler(labels, 2, 4, seed=1), ClassBalancedSampler(labels, 2, 4, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    whole = _batches(ClassBalancedSampler(labels, 2, 4, seed=1), 8)
    r0 = _batches(ClassBalancedSampler(labels, 2, 4, seed=1, rank=0, world=2), 8)
    r1 = _batches(ClassBalancedSampler(labels, 2, 4, seed=1, rank=1, world=2), 8)
    assert r0 == whole[0::2][: len(r0)] and r1 == whole[1::2][: len(r1)] and len(r0) == len(r1) == 2


@pytest.mark.parametrize("loss", list(METRIC_LOSSES))
def test_every_loss_trains_a_step(loss):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 1, 16, width=4)
    m = MetricLearner(backbone, MethodOptions(proj_hidden=16, proj_dim=8), loss, n_classes=3)
    m.labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    x = torch.randn(8, 1, 16, 16)
    loss_value, logs = m.training_step([x], torch.arange(8))
    assert torch.isfinite(loss_value) and loss_value > 0
    loss_value.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert logs["embeddings"].shape == (8, 8)


def test_bad_loss_arguments_fail_before_data():
    with pytest.raises(ReplearnError, match="no argument 'margn'"):
        metric(out="unused", loss="triplet", loss_args={"margn": 0.3}, data="no-such-folder")
    with pytest.raises(ReplearnError, match="unknown triplet mining 'hardest'"):
        metric(out="unused", loss="triplet", loss_args={"mining": "hardest"}, data="no-such-folder")
    backbone = build_backbone("convnet", 1, 16, width=4)
    with pytest.raises(ReplearnError, match="mining"):
        MetricLearner(backbone, MethodOptions(args={"mining": "hardest"}), "triplet", 3)


def test_metric_run_holds_out_classes_and_resumes_exactly(tmp_path):
    out = metric(out=str(tmp_path / "a"), loss="supcon", classes="0-4", **{**TINY, "epochs": 2})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["held_out_classes"] == [5, 6, 7, 8, 9] and meta["trained_classes"] == ["0", "1", "2", "3", "4"]
    assert meta["images"] == int(sum(1 for y in load_digit_labels() if y < 5))
    assert (out / "encoder.pt").is_file() and (out / "last.ckpt").is_file()
    _, spec = load_encoder(out)
    assert spec["method"] == "metric:supcon"
    # a crash after the first epoch, then --resume: the same weights as two epochs in one go
    with pytest.raises(RuntimeError, match="simulated crash"):
        metric(out=str(tmp_path / "b"), loss="supcon", classes="0-4", callbacks=[_StopAfterFirstEpoch()],
               **{**TINY, "epochs": 2})
    resumed = metric(out=str(tmp_path / "b"), resume=True)
    a = torch.load(out / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(resumed / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def load_digit_labels():
    from replearn.data import load_data

    return load_data("digits", "train").labels.tolist()


def test_metric_from_a_pretrained_encoder_starts_from_its_weights(tmp_path):
    from replearn.train.run import pretrain

    pre = pretrain(out=str(tmp_path / "pre"), data="digits", width=4, batch_size=32, limit=128, epochs=1,
                   knn_monitor=False, precision="32")
    w0 = load_encoder(pre)[0].state_dict()
    out = metric(out=str(tmp_path / "m"), loss="arcface", init=str(pre), lr=0.0, **{**TINY, "width": 8})
    w1 = load_encoder(out)[0].state_dict()
    # lr 0: only BN running statistics move, every weight is the pretrained one
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if "running" not in k and "num_batches" not in k)
    assert load_encoder(out)[1]["init"] == str(pre)


def _npz(path, labels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(labels), 1, 8, 8), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array(labels))
    return str(path)


def test_a_class_with_one_image_is_listed_for_a_pair_loss_and_kept_for_arcface(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz", ["a"] * 6 + ["b"] * 6 + ["c"])
    out = metric(out=str(tmp_path / "pair"), loss="triplet", **{**TINY, "data": data})
    assert "left out 1 class(es) with a single image (c)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "skipped.csv")))
    assert len(rows) == 1 and "only image of class c" in rows[0]["reason"]
    assert json.loads((out / "meta.json").read_text())["trained_classes"] == ["a", "b"]
    out = metric(out=str(tmp_path / "proxy"), loss="arcface", **{**TINY, "data": data})
    assert json.loads((out / "meta.json").read_text())["trained_classes"] == ["a", "b", "c"]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    one = _npz(tmp_path / "one.npz", ["a"] * 4 + ["b"])
    assert main(["metric", "--data", one, "--loss", "contrastive", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two or more classes with two images each" in err
    unlabelled = tmp_path / "u.npy"
    np.save(unlabelled, np.zeros((6, 8, 8), np.uint8))
    assert main(["metric", "--data", str(unlabelled), "--out", str(tmp_path / "r2")]) == 2
    assert "has no class labels" in capsys.readouterr().err
    assert main(["metric", "--data", "digits", "--classes", "3-12", "--out", str(tmp_path / "r3")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert main(["metric", "--loss", "arcfce", "--out", str(tmp_path / "r4")]) == 2
    assert "loss must be one of" in capsys.readouterr().err


def test_a_labels_csv_naming_missing_files_lists_them_as_skipped(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["path,label"]
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'cat' if i % 2 else 'dog'}")
    rows += ["gone.png,cat", "sub/lost.png,dog"]  # no such files
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["metric", "--data", str(folder), "--labels-csv", str(tmp_path / "labels.csv"), "--loss", "supcon",
                 "--epochs", "1", "--width", "4", "--image-size", "8", "--classes-per-batch", "2",
                 "--images-per-class", "2", "--knn-monitor", "false", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "skipped 2 image(s); the list and the reasons are in" in out
    rows = {r["path"]: r["reason"] for r in csv.DictReader(open(tmp_path / "run" / "skipped.csv"))}
    assert set(rows) == {"gone.png", "sub/lost.png"} and "named in labels.csv" in rows["gone.png"]
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["images"] == 12
