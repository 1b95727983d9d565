"""Retrieval on held-out classes: Recall@K and MAP@R against a naive float64 loop and a hand-worked
case, class specs, and eval.json["retrieval"] from ``replearn evaluate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from replearn.data import load_data
from replearn.data.sources import FASHION_CLASSES
from replearn.errors import ReplearnError
from replearn.evaluate.features import raw_pixels
from replearn.evaluate.protocol import evaluate, format_table
from replearn.evaluate.retrieval import parse_classes, retrieval_metrics
from replearn.nn import build_backbone
from replearn.nn.backbones import save_encoder

KS = (1, 2, 4, 8)


def naive_retrieval(feats, labels, ks=KS):
    """Reference: per query, the others sorted by float64 cosine (Python's stable sort: ties by
    index), Recall@K and MAP@R by their definitions; unrounded percentages."""
    x = np.asarray(feats, np.float64)
    y = [int(v) for v in labels]
    hits, aps = dict.fromkeys(ks, 0), []
    for q in range(len(x)):
        others = [j for j in range(len(x)) if j != q]
        r = sum(y[j] == y[q] for j in others)
        if r == 0:
            continue
        sims = {j: float(x[q] @ x[j]) / (np.linalg.norm(x[q]) * np.linalg.norm(x[j])) for j in others}
        rel = [y[j] == y[q] for j in sorted(others, key=lambda j: -sims[j])]
        for k in ks:
            hits[k] += any(rel[:k])
        aps.append(sum(sum(rel[:i]) / i * rel[i - 1] for i in range(1, r + 1)) / r)
    out = {f"recall@{k}": 100.0 * hits[k] / len(aps) for k in ks}
    return {**out, "map@r": 100.0 * sum(aps) / len(aps), "queries": len(aps)}


def assert_matches(got, ref):
    assert got["queries"] == ref["queries"]
    assert set(got) == set(ref)
    for key in ref:  # got is rounded to 2 decimals; one query differing moves a figure by > 0.5
        assert got[key] == pytest.approx(ref[key], abs=0.0051), key


def blobs(n, dim, num_classes, seed, spread):
    centres = np.random.default_rng([dim, num_classes]).normal(size=(num_classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.mark.parametrize("seed,spread", [(0, 1.0), (1, 2.5), (2, 0.3)])
def test_matches_naive_loop(seed, spread):
    x, y = blobs(90, 6, 5, seed, spread)
    y[7] = 9  # a class of one item: never a query, but still a wrong answer for the others
    ref = naive_retrieval(x, y)
    assert ref["queries"] == 89
    assert_matches(retrieval_metrics(x, y), ref)
    assert_matches(retrieval_metrics(torch.from_numpy(x).double(), torch.from_numpy(y)), ref)
    assert 0 < ref["map@r"] < ref["recall@1"] < 100  # not a trivial reference


def test_exact_ties_rank_by_index_like_a_stable_sort():
    # Axis directions only: every cosine is exactly -1, 0 or 1, so most rankings are decided by
    # the tie rule, including at the top-k cut; the naive loop breaks ties by index.
    rng = np.random.default_rng(3)
    axes = np.concatenate([np.eye(3), -np.eye(3)]).astype(np.float32)
    x, y = axes[rng.integers(0, 6, 200)], rng.integers(0, 4, 200)
    ref = naive_retrieval(x, y, ks=(1, 3, 60))
    for chunk in (1, 13, 1024):
        assert_matches(retrieval_metrics(x, y, ks=(1, 3, 60), chunk=chunk), ref)
    # The tie rule on four points: for the query [1, 0] the other three are all at cosine 0.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 1.0]])
    # Labels 0,1,0,1: the query's first tied neighbour (index 1) is class 1 -> a miss; the other
    # three queries find their one positive first -> Recall@1 = MAP@R = 3/4.
    r = retrieval_metrics(p, torch.tensor([0, 1, 0, 1]), ks=(1,))
    assert (r["recall@1"], r["map@r"], r["queries"]) == (75.0, 75.0, 4)
    # Swap items 1 and 2: now the lower index among the ties is the positive -> all hit.
    r = retrieval_metrics(p[[0, 2, 1, 3]], torch.tensor([0, 0, 1, 1]), ks=(1,))
    assert (r["recall@1"], r["map@r"]) == (100.0, 100.0)


def test_hand_worked_case():
    # Unit vectors at angles 0, 15, 40, 45, 85, 175 degrees, classes A B A A B C.
    #   q   class  R  others by angle (nearest first)       rel@R   AP     hit@1 @2 @4
    #   0   A      2  15B 40A 45A 85B 175C                 0 1     1/4    0     1  1
    #   15  B      1  0A 40A 45A 85B 175C                  0       0      0     0  1
    #   40  A      2  45A 15B 0A 85B 175C                  1 0     1/2    1     1  1
    #   45  A      2  40A 15B 85B 0A 175C                  1 0     1/2    1     1  1
    #   85  B      1  45A 40A 15B 0A 175C                  0       0      0     0  1
    #   175 C      0  (alone in its class: not a query)
    # Recall@1 = 2/5, @2 = 3/5, @4 = @8 = 5/5; MAP@R = (1/4 + 1/2 + 1/2) / 5 = 1/4.
    deg = torch.tensor([0.0, 15.0, 40.0, 45.0, 85.0, 175.0]) * math.pi / 180
    x = torch.stack([deg.cos(), deg.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.0], [7.0]])
    r = retrieval_metrics(x, torch.tensor([0, 1, 0, 0, 1, 2]))  # lengths must not matter: cosine
    assert r == {"recall@1": 40.0, "recall@2": 60.0, "recall@4": 100.0, "recall@8": 100.0, "map@r": 25.0, "queries": 5}


def test_chunking_and_depth_do_not_change_result():
    x, y = blobs(301, 16, 7, seed=4, spread=2.0)
    full = retrieval_metrics(x, y, chunk=1024)
    for chunk in (1, 7, 100, 300):
        assert retrieval_metrics(x, y, chunk=chunk) == full
    # K beyond the gallery: every query with a positive anywhere is a hit.
    small = retrieval_metrics(x[:12], y[:12], ks=(1, 500))
    assert small["recall@500"] == 100.0


def test_rejects_bad_inputs():
    x, y = blobs(10, 3, 2, seed=5, spread=1.0)
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(x, y[:5])
    with pytest.raises(ValueError, match="shares its label"):
        retrieval_metrics(x, np.arange(10))
    with pytest.raises(ValueError, match=">= 0"):
        retrieval_metrics(x, np.full(10, -1))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(x, y)


def test_parse_classes_good_specs():
    assert parse_classes("5-9") == [5, 6, 7, 8, 9]
    assert parse_classes("5,6,7,8,9", FASHION_CLASSES) == [5, 6, 7, 8, 9]
    assert parse_classes(" 7, 0-2 ,1") == [0, 1, 2, 7]
    assert parse_classes("sandal,shirt", FASHION_CLASSES) == [5, 6]
    assert parse_classes("Ankle boot,T-shirt/top", FASHION_CLASSES) == [0, 9]  # a name with a '-'
    assert parse_classes([9, 5], FASHION_CLASSES) == [5, 9]  # as a run's meta.json holds them
    assert parse_classes("3", ["0", "1", "2", "3"]) == [3]


@pytest.mark.parametrize(
    "spec,classes,message",
    [
        ("", FASHION_CLASSES, "no classes given"),
        ("9-5", FASHION_CLASSES, "range 9-5 is empty"),
        ("5-12", FASHION_CLASSES, "class 12 does not exist: the data has classes 0-9"),
        ("sandals", FASHION_CLASSES, "'sandals' is neither a class index, a range a-b nor a class name; the classes are T-shirt/top"),
        ("shirt", None, "'shirt' is neither"),
        ("5;6", None, "'5;6' is neither"),
        ([True], None, "is not a class index or name"),
    ],
)
def test_parse_classes_bad_specs(spec, classes, message):
    with pytest.raises(ReplearnError) as err:
        parse_classes(spec, classes)
    assert message in err.value.message and "\n" not in str(err.value)
    assert err.value.hint and err.value.hint.startswith("write e.g. 5-9")


def test_evaluate_raw_pixels_writes_retrieval(tmp_path):
    out = tmp_path / "raw"
    r = evaluate(baseline="raw", data="digits", out=str(out), few_label=[2], seeds=[0], retrieval_classes="5-9",
                 verbose=False)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["retrieval"] == r["retrieval"]
    ret = saved["retrieval"]
    assert ret["classes"] == [5, 6, 7, 8, 9] and ret["class_names"] == ["5", "6", "7", "8", "9"]
    assert ret["split"] == "test"
    te = load_data("digits", "test")
    keep = te.labels >= 5
    assert ret["queries"] == int(keep.sum()) and 100 < ret["queries"] < len(te)
    assert {k: v for k, v in ret.items() if k.startswith(("recall", "map"))} == {
        k: v for k, v in retrieval_metrics(raw_pixels(te)[keep], te.labels[keep]).items() if k != "queries"
    }
    assert 80 < ret["recall@1"] <= ret["recall@2"] <= ret["recall@8"] <= 100 and ret["map@r"] < ret["recall@1"]
    table = format_table([r, {**r, "encoder": "old run"} | {"retrieval": None}])
    head, _, first, second = table.splitlines()
    assert head.split()[-2:] == ["R@1", "MAP@R"]
    assert first.split()[-2:] == [f"{ret['recall@1']:.1f}", f"{ret['map@r']:.1f}"]
    assert "MAP@R" not in format_table([{k: v for k, v in r.items() if k != "retrieval"}])


def _fake_run(folder, meta: dict):
    """A run folder with a random-init encoder for 8px digits and the given meta.json."""
    folder.mkdir()
    torch.manual_seed(0)
    spec = {"backbone": "convnet", "width": 4, "small_stem": True, "method": "metric", "channels": 1,
            "image_size": 8, "mean": [0.5], "std": [0.5]}
    save_encoder(folder / "encoder.pt", build_backbone("convnet", 1, 8, width=4), spec)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_evaluate_reads_held_out_classes_from_meta_json(tmp_path):
    run = _fake_run(tmp_path / "metric", {"held_out_classes": [0, 1, 2]})
    r = evaluate(str(run), data="digits", few_label=[2], seeds=[0], verbose=False)
    te = load_data("digits", "test")
    assert r["retrieval"]["classes"] == [0, 1, 2]
    assert r["retrieval"]["queries"] == int((te.labels <= 2).sum())
    assert json.loads((run / "eval.json").read_text())["retrieval"] == r["retrieval"]
    # The option wins over meta.json; without either there is no retrieval (as before).
    r = evaluate(str(run / "encoder.pt"), data="digits", few_label=[2], seeds=[0], retrieval_classes="9",
                 out=str(tmp_path / "nine"), verbose=False)
    assert r["retrieval"]["classes"] == [9] and r["retrieval"]["queries"] == int((te.labels == 9).sum())
    plain = _fake_run(tmp_path / "plain", {"images": 100})
    assert "retrieval" not in evaluate(str(plain), data="digits", few_label=[2], seeds=[0], verbose=False)


def test_evaluate_rejects_classes_without_test_images(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 3], 20)  # class 2 exists (indices run 0-3) but has no image
    data = tmp_path / "tiny.npz"
    np.savez(data, images=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), labels=labels)
    kw = {"baseline": "raw", "data": str(data), "out": str(tmp_path / "out"), "few_label": [2], "seeds": [0],
          "verbose": False}
    with pytest.raises(ReplearnError, match=r"has 0 labelled image\(s\) of classes \[2\]") as err:
        evaluate(retrieval_classes="2", **kw)
    assert err.value.hint == "its labelled classes are 0, 1, 3"
    with pytest.raises(ReplearnError, match="class 7 does not exist"):
        evaluate(retrieval_classes="7", **kw)
    assert not (tmp_path / "out").exists()  # failed before any feature was computed
    r = evaluate(retrieval_classes="0,1", **kw)
    assert r["retrieval"]["queries"] == 40 and r["retrieval"]["class_names"] == ["0", "1"]
    labels[41:] = -1  # class 3 keeps 1 labelled image: nothing to retrieve it with
    np.savez(data, images=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), labels=labels)
    with pytest.raises(ReplearnError, match="has 1 labelled image"):
        evaluate(retrieval_classes="3", **kw)
