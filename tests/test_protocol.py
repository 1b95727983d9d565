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
