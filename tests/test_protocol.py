"""replearn.evaluate: eval.json's schema, and its figures equal to the probes run by hand."""

import json

import torch

from replearn.data import load_data
from replearn.evaluate.knn import knn_accuracy
from replearn.evaluate.protocol import evaluate, format_table
from replearn.nn import load_encoder
from replearn.train.run import pretrain
from replearn.views import eval_view


def test_raw_baseline_equals_probes_on_pixels(tmp_path):
    out = tmp_path / "raw"
    r = evaluate(baseline="raw", data="digits", out=str(out), few_label=[3], seeds=[0, 1], verbose=False)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["knn"] == r["knn"] and set(saved) >= {"knn", "linear", "few_label", "data", "encoder", "linear_C"}
    assert saved["probe"] == "torch" and saved["precision"] == "auto"  # what produced the figures
    assert set(saved["few_label"]) == {"30"}  # 3 per class x 10 classes
    f = saved["few_label"]["30"]
    assert f["min"] <= f["mean"] <= f["max"]
    tr, te = load_data("digits", "train"), load_data("digits", "test")
    by_hand = knn_accuracy(tr.images.flatten(1).float() / 255, tr.labels, te.images.flatten(1).float() / 255, te.labels)
    assert abs(saved["knn"] - round(by_hand, 2)) < 1e-9
    assert 85 < saved["linear"] <= 100  # digits pixels are nearly linearly separable


def test_encoder_evaluation_uses_its_own_features(tmp_path, capsys):
    run = pretrain(out=str(tmp_path / "run"), data="digits", width=8, batch_size=64, limit=256, epochs=1,
                   knn_monitor=False, precision="32")
    r = evaluate(str(run), data="digits", few_label=[2], seeds=[0], precision="32")  # fp32: compared exactly
    assert (run / "eval.json").is_file() and "simclr convnet" in r["encoder"]
    enc, spec = load_encoder(run)
    tr, te = load_data("digits", "train"), load_data("digits", "test")
    with torch.no_grad():
        ftr = enc(eval_view(tr.images, spec["mean"], spec["std"]))
        fte = enc(eval_view(te.images, spec["mean"], spec["std"]))
    assert abs(r["knn"] - round(knn_accuracy(ftr, tr.labels, fte, te.labels), 2)) < 1e-9
    table = format_table([r])
    assert f"{r['knn']:.1f}" in table and "20 labels" in table
    assert "wrote" in capsys.readouterr().out


def test_probe_sets_hold_out_a_fifth_of_each_class_of_a_set_without_a_test_split():
    from replearn.evaluate.protocol import probe_sets

    y = torch.tensor([0] * 10 + [1] * 5 + [-1] * 3 + [2])  # class 2 has a single image: train only
    f = torch.arange(len(y), dtype=torch.float32)[:, None]  # each feature is its image's index
    p = probe_sets(f, y, f, y, same=True)
    ftr, ytr, fte, yte = p.sets
    train_ids, test_ids = set(ftr[:, 0].int().tolist()), set(fte[:, 0].int().tolist())
    assert not train_ids & test_ids  # never scored on an image it was fit on
    assert train_ids | test_ids == set(range(15)) | {18}  # every labelled image, no unlabelled one
    assert sorted(yte.tolist()) == [0, 0, 1]  # round(0.2 x 10) = 2, round(0.2 x 5) = 1, none of 1
    assert torch.equal(ytr, y[ftr[:, 0].long()]) and torch.equal(yte, y[fte[:, 0].long()])
    assert p.summary() == {"train": 13, "test": 3, "held_out": True, "unlabelled_left_out": 3}
    assert probe_sets(f, y, f, y, same=True).sets[2].tolist() == fte.tolist()  # seeded
    # with a test split, each side only loses its unlabelled images
    q = probe_sets(f, y, f[:4], torch.tensor([1, -1, 0, 2]), same=False)
    assert q.sets[3].tolist() == [1, 0, 2] and len(q.sets[1]) == 16 and q.summary()["unlabelled_left_out"] == 4


def test_a_partly_labelled_folder_is_scored_on_held_out_images(tmp_path, capsys):
    from imagefactory import make_class_folder

    labels = make_class_folder(tmp_path / "imgs", {"a": 12, "b": 12}, size=8)
    # a labels CSV naming 20 of the 24 images: the other 4 are unlabelled
    rows = [f"{path},{name}" for k, (path, name) in enumerate(sorted(labels.items())) if k % 6]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    r = evaluate(baseline="raw", data=str(tmp_path / "imgs"), labels_csv=str(tmp_path / "labels.csv"),
                 out=str(tmp_path / "ev"), few_label=[2, 10], seeds=[0])
    assert r["probe_split"] == {"train": 16, "test": 4, "held_out": True, "unlabelled_left_out": 4}
    assert sum(r["classes"]["support"]) == 4  # the linear probe's scores count held-out images only
    assert set(r["few_label"]) == {"4"}  # 2 per class x 2 classes; 10 per class cannot be filled
    assert "8 labelled training images" in r["few_label_skipped"]["10"]
    out = capsys.readouterr().out
    assert "features of 24 images ..." in out and "has no test split" in out and "skipped" in out
    assert "so every one of them votes" in out  # k = 200 over 16 training images
