"""Cosine search with FAISS: the exact index against a naive float64 top-k, approximate recall on
clustered data, save/load, search by id and by image through a real tiny run, the CSV, and the kNN
probe's index path equal to its exact path."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import replearn.embed.index as index_mod
from imagefactory import make_class_folder
from replearn.embed.index import EmbeddingIndex, build_faiss_index, index, neighbours, search
from replearn.errors import ReplearnError
from replearn.evaluate import knn


def _naive_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k by a float64 loop: (similarities (M, k), rows (M, k))."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    sims, rows = [], []
    for v in q:
        cos = np.array([v @ u / (np.linalg.norm(v) * np.linalg.norm(u)) for u in b])
        order = np.argsort(-cos, kind="stable")[:k]
        sims.append(cos[order])
        rows.append(order)
    return np.array(sims), np.array(rows)


def _clustered(n_centres=40, per=50, dim=32, noise=0.15, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n_centres * per, dim), cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    x = np.repeat(centres, per, 0) + noise * rng.standard_normal((n_centres * per, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_centres), per)


def _emb_file(path, vectors, ids=None, labels=None, meta=None):
    ids = ids if ids is not None else [f"item{i:03d}" for i in range(len(vectors))]
    labels = labels if labels is not None else np.full(len(ids), -1)
    np.savez(path, embeddings=vectors, ids=np.asarray(ids), labels=labels, meta=np.asarray(json.dumps(meta or {})))
    return path


def test_exact_index_equals_a_naive_float64_top_k():
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((150, 12)) * rng.uniform(0.1, 10, (150, 1))).astype(np.float32)  # norms differ
    queries = rng.standard_normal((7, 12)).astype(np.float32)
    sims, rows = neighbours(base, queries, 5)
    want_sims, want_rows = _naive_top_k(base, queries, 5)
    assert sims.shape == rows.shape == (7, 5) and sims.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert neighbours(base[:3], queries, 10)[1].shape == (7, 3)  # k clipped to the base size


def test_zero_vectors_score_zero_not_nan():
    base = np.eye(4, dtype=np.float32)
    base[2] = 0  # a zero vector in the index
    for kind in ("exact", "hnsw", "ivf"):
        idx = build_faiss_index(base, kind)
        sims, rows = idx.search(np.array([[0, 0, 1, 0], [0, 0, 0, 0]], np.float32), 4)
        assert np.isfinite(sims).all(), kind
        assert sims[0].max() == 0 and (sims[1] == 0).all(), kind  # nothing is similar to the zero vector


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_on_clustered_data(kind):
    x, _ = _clustered()
    rng = np.random.default_rng(1)
    queries = x[rng.choice(len(x), 100, replace=False)] + 0.05 * rng.standard_normal((100, x.shape[1])).astype(np.float32)
    exact = neighbours(x, queries, 10)[1]
    idx = build_faiss_index(x, kind)
    _, rows = index_mod._search(idx, index_mod.normalized(queries), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)])
    assert recall >= 0.95, recall
    assert index_mod.index_params(idx)["kind"] == kind


def test_auto_kind_and_ivf_is_deterministic():
    x, _ = _clustered(n_centres=10, per=30)
    assert index_mod.index_params(build_faiss_index(x, "auto", exact_max=300))["kind"] == "exact"
    assert index_mod.index_params(build_faiss_index(x, "auto", exact_max=299))["kind"] == "hnsw"
    a = build_faiss_index(x, "ivf", seed=3).search(x[:20], 5)
    b = build_faiss_index(x, "ivf", seed=3).search(x[:20], 5)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ReplearnError, match="did you mean 'hnsw'"):
        build_faiss_index(x, "hnws")


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    x, clusters = _clustered(n_centres=10, per=30)
    emb_path = _emb_file(tmp_path / "emb.npz", x, labels=clusters, meta={"run": "/r", "data": "d", "image_size": 16})
    out = index(emb_path, kind=kind, out=str(tmp_path / "e.index"))
    assert out == tmp_path / "e.index" and sorted(p.name for p in tmp_path.iterdir()) == ["e.index", "emb.npz"]
    loaded = EmbeddingIndex.load(out)
    built = EmbeddingIndex.build(index_mod.load_embeddings(emb_path), kind)
    assert loaded.ids == built.ids and (loaded.labels == clusters).all()
    assert loaded.meta["run"] == "/r" and loaded.meta["image_size"] == 16 and loaded.meta["kind"] == kind
    assert loaded.meta["dim"] == 32 and loaded.dim == 32
    got, want = loaded.search_vectors(x[:25], 7), built.search_vectors(x[:25], 7)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    sims, rows = loaded.search_id("item040", 5)  # the vector of an item read back from the index
    assert 40 not in rows.tolist() and (clusters[rows] == clusters[40]).all() and sims[0] > 0.9
    with pytest.raises(ReplearnError, match="dimension 32"):
        loaded.search_vectors(np.ones((1, 31), np.float32), 3)


def test_load_says_what_is_wrong_with_a_file(tmp_path):
    with pytest.raises(ReplearnError, match="no index file"):
        EmbeddingIndex.load(tmp_path / "missing.index")
    with pytest.raises(ReplearnError, match="is a folder"):
        EmbeddingIndex.load(tmp_path)
    (tmp_path / "junk.index").write_bytes(b"\x00not an index at all" * 10)
    with pytest.raises(ReplearnError, match="not a readable replearn index") as e:
        EmbeddingIndex.load(tmp_path / "junk.index")
    assert "\n" not in str(e.value)
    emb = _emb_file(tmp_path / "emb.npz", np.ones((3, 4), np.float32))
    with pytest.raises(ReplearnError, match="not a replearn index but an embeddings file") as e:
        EmbeddingIndex.load(emb)
    assert "replearn index" in e.value.hint
    good = index(emb, out=str(tmp_path / "good.index"))
    damaged = tmp_path / "damaged.index"
    with np.load(good) as z:  # a valid container whose FAISS bytes are cut short
        parts = {k: z[k] for k in z.files}
    parts["index"] = parts["index"][:40]
    np.savez(damaged.open("wb"), **parts)
    with pytest.raises(ReplearnError, match="not a readable replearn index"):
        EmbeddingIndex.load(damaged)


def test_bad_embeddings_input_is_a_user_error(tmp_path):
    np.savez(tmp_path / "flat.npz", embeddings=np.ones(5, np.float32), ids=np.asarray(list("abcde")))
    with pytest.raises(ReplearnError, match=r"2-D array of numbers \(N, D\), got shape \(5,\)"):
        index(tmp_path / "flat.npz", out=str(tmp_path / "x.index"))
    with pytest.raises(ReplearnError, match="unknown option 'knd'"):
        index(tmp_path / "flat.npz", knd="hnsw")
    assert not (tmp_path / "x.index").exists()


def test_search_by_id_excludes_itself_and_suggests_ids(tmp_path, capsys):
    x, _ = _clustered(n_centres=5, per=8, dim=8)
    x[1] = x[0]  # an exact copy of item000 ties with it at similarity 1
    emb = _emb_file(tmp_path / "emb.npz", x)
    idx = EmbeddingIndex.build(index_mod.load_embeddings(emb), "exact")
    sims, rows = idx.search_id("item000", 5)
    assert 0 not in rows.tolist() and rows[0] == 1 and sims[0] == pytest.approx(1.0, abs=1e-6)
    want = _naive_top_k(x, x[:1], 6)[1][0]
    assert rows.tolist() == [r for r in want.tolist() if r != 0][:5]
    assert len(idx.search_id("item000", 1000)[1]) == len(x) - 1  # k clipped: every other item
    with pytest.raises(ReplearnError, match="no id 'item00' among the 40") as e:
        idx.search_id("item00", 3)
    assert "did you mean 'item000', 'item001', 'item002'?" in e.value.hint  # ids it begins
    pets = index_mod.Embeddings(np.eye(3, dtype=np.float32), ["cats/001.png", "dogs/001.png", "birds/001.png"],
                                np.full(3, -1))
    with pytest.raises(ReplearnError) as e:
        EmbeddingIndex.build(pets).search_id("dogs/01.png", 1)
    assert e.value.hint.startswith("did you mean 'dogs/001.png'")  # a typo: the closest first

    path = index(emb, out=str(tmp_path / "e.index"))
    out_csv = tmp_path / "n.csv"
    found = search(path, id="item007", k=3, out=str(out_csv))
    printed = capsys.readouterr().out
    assert [f["rank"] for f in found] == [1, 2, 3] and all(f["id"] != "item007" for f in found)
    assert found[0]["path"] == found[0]["id"]  # not folder data: the path is the id
    rows_csv = list(csv.DictReader(open(out_csv)))
    assert [(r["rank"], r["id"], r["path"]) for r in rows_csv] == [(str(f["rank"]), f["id"], f["path"]) for f in found]
    assert [float(r["similarity"]) for r in rows_csv] == [round(f["similarity"], 4) for f in found]
    assert f"{found[0]['id']}" in printed and f"{found[0]['similarity']:.4f}" in printed
    for bad, match in (({}, "exactly one of"), ({"id": "item001", "query": "a.png"}, "exactly one of"),
                       ({"id": "item001", "k": 0}, "at least 1"), ({"id": "item001", "out": "n.txt"}, r"\.csv")):
        with pytest.raises(ReplearnError, match=match):
            search(path, **bad)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A folder of 16 random 16-px PNGs, a 1-epoch run on it, its embeddings and exact index."""
    import replearn
    from replearn.embed.export import embed

    root = tmp_path_factory.mktemp("search")
    folder = root / "images"
    make_class_folder(folder, {"a": 8, "b": 8}, size=16)
    torch.manual_seed(0)
    run = replearn.pretrain(data=str(folder), epochs=1, batch_size=4, width=4, image_size=16, precision="32",
                            out=str(root / "run"), knn_monitor=False)
    emb = embed(str(run), data=str(folder), out=str(root / "emb.npz"))
    return folder, index(emb, out=str(root / "emb.index"))


@pytest.mark.slow
def test_search_image_finds_the_indexed_image_itself(tiny_run, tmp_path, capsys):
    folder, path = tiny_run
    found = search(path, query=str(folder / "b" / "005.png"), k=3, out=str(tmp_path / "n.csv"))
    assert found[0]["id"] == "b/005.png" and found[0]["similarity"] > 0.9999
    assert found[0]["path"] == str(folder / "b" / "005.png")  # folder data: the file
    assert len(found) == 3 and found[1]["similarity"] <= found[0]["similarity"]
    assert len(list(csv.DictReader(open(tmp_path / "n.csv")))) == 3
    gray = tmp_path / "gray.png"  # a gray query for the colour encoder: converted, not refused
    Image.open(folder / "a" / "001.png").convert("L").save(gray)
    assert len(EmbeddingIndex.load(path).search_image(gray, 20)[1]) == 16  # k clipped to the index


@pytest.mark.slow
def test_search_image_refuses_a_missing_or_corrupt_file(tiny_run, tmp_path):
    _, path = tiny_run
    with pytest.raises(ReplearnError, match="no image file"):
        search(path, query=str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ReplearnError, match="cannot read the image .*bad.png") as e:
        search(path, query=str(bad))
    assert "\n" not in str(e.value)


def test_knn_above_the_threshold_uses_the_index_and_votes_the_same(monkeypatch):
    x, clusters = _clustered(n_centres=12, per=40, dim=16, noise=0.4)
    labels = clusters % 4  # 4 classes, 3 clusters each
    rng = np.random.default_rng(2)
    test = x[rng.choice(len(x), 120, replace=False)] + 0.3 * rng.standard_normal((120, 16)).astype(np.float32)
    exact = knn.knn_predict(x, labels, test, k=20, chunk=50)
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return neighbours(*args, **kwargs)

    monkeypatch.setattr(knn, "INDEX_ABOVE", 100)
    monkeypatch.setattr(index_mod, "neighbours", spy)
    approx = knn.knn_predict(torch.from_numpy(x), labels, test, k=20, chunk=50)
    assert calls == [{"exact_max": 100}]  # 480 train items > 100: the HNSW path
    assert torch.equal(approx, exact)


@pytest.mark.slow
def test_bad_input_through_the_command_line_is_one_line_each(tiny_run, tmp_path):
    """An unknown id, an unreadable query image, a budget larger than the set, a wrong file: each
    is one line on stderr, exit 2, no traceback."""
    import subprocess
    import sys

    folder, path = tiny_run
    emb = tmp_path / "emb.npz"
    _emb_file(emb, np.eye(4, dtype=np.float32))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    cases = [
        (["search", str(path), "--id", "a/999.png"], "no id 'a/999.png'"),
        (["search", str(path), "--query", str(bad)], "cannot read the image"),
        (["search", str(path), "--query", str(folder / "a" / "001.png"), "--id", "a/001.png"], "one of"),
        (["select", str(emb), "--budget", "5", "--out", str(tmp_path / "s.csv")], "budget"),
        (["search", str(emb), "--id", "item000"], "index it first"),
    ]
    for args, said in cases:
        p = subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (args, p.stderr)
