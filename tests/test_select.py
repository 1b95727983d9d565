"""Choosing images to label: k-center against hand-worked picks and a naive loop, TypiClust on
blobs whose densest point is known, exclusions, errors, and the CSV the CLI function writes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from replearn.embed.export import _write
from replearn.embed.select import STRATEGIES, select, select_indices
from replearn.errors import ReplearnError


def _blobs(sizes, dim=8, sigma=0.5, seed=0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Blobs around orthogonal centres 10 * e_b: (x (N, D), blob of each row (N,), row of each
    blob's centre). Each blob's first row is its centre itself, its densest point: in 8-d the other
    rows lie on a shell about sigma * sqrt(8) from it and sigma * 4 from each other."""
    rng = np.random.default_rng(seed)
    xs, blob, centres = [], [], []
    for b, n in enumerate(sizes):
        c = np.zeros(dim)
        c[b] = 10.0
        pts = c + sigma * rng.standard_normal((n, dim))
        pts[0] = c
        centres.append(sum(map(len, xs)))
        xs.append(pts)
        blob += [b] * n
    return np.concatenate(xs).astype(np.float32), np.asarray(blob), centres


def _circle(degrees) -> np.ndarray:
    a = np.radians(degrees)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_kcenter_picks_worked_out_by_hand():
    # unit vectors at these angles: chord distance grows with the angle between them (up to 180)
    x = _circle([0, 10, 25, 50, 90, 100, 170])
    exclude = np.zeros(7, bool)
    exclude[0] = True
    # from {0}: 170 is farthest; then 90 (80 from 170); then 50 (40 from 90); then 25 (25 from 0)
    assert select_indices(x, 4, "kcenter", exclude=exclude).tolist() == [6, 4, 3, 2]
    # scale does not matter: vectors are L2-normalised first
    assert select_indices(x * np.arange(1, 8)[:, None], 4, "kcenter", exclude=exclude).tolist() == [6, 4, 3, 2]


def test_kcenter_matches_a_naive_float64_loop():
    x = np.random.default_rng(1).standard_normal((200, 5)).astype(np.float32)
    picks = select_indices(x, 12, "kcenter", seed=3)
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    chosen = [int(picks[0])]  # the seeded random start
    while len(chosen) < 12:
        far = max((r for r in range(len(x)) if r not in chosen),
                  key=lambda r: min(np.linalg.norm(xn[r] - xn[c]) for c in chosen))
        chosen.append(far)
    assert picks.tolist() == chosen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic_per_seed_and_never_picks_excluded(strategy):
    x, _, _ = _blobs([60, 40, 30], seed=2)
    exclude = np.zeros(len(x), bool)
    exclude[::3] = True
    a = select_indices(x, 10, strategy, seed=5, exclude=exclude)
    assert a.tolist() == select_indices(x, 10, strategy, seed=5, exclude=exclude).tolist()
    assert len(a) == 10 and len(set(a.tolist())) == 10 and not exclude[a].any()
    if strategy != "typiclust":  # typiclust's picks hardly depend on the k-means seed on clear blobs
        # k-center starts from the excluded rows; the seed only draws its start when there are none
        ex = exclude if strategy == "random" else None
        assert select_indices(x, 10, strategy, seed=5, exclude=ex).tolist() != select_indices(
            x, 10, strategy, seed=6, exclude=ex).tolist()
    everything = select_indices(x, int((~exclude).sum()), strategy, seed=5, exclude=exclude)
    assert sorted(everything.tolist()) == np.flatnonzero(~exclude).tolist()


def test_typiclust_picks_each_blobs_densest_point_largest_blob_first():
    x, _, centres = _blobs([120, 80, 50, 30])
    picks = select_indices(x, 4, "typiclust", seed=0)
    assert picks.tolist() == centres  # one per blob, its centre, in order of blob size


def test_typiclust_skips_covered_blobs_and_tiny_clusters():
    x, blob, centres = _blobs([120, 80, 50, 30])
    exclude = np.zeros(len(x), bool)
    exclude[[centres[0] + 7, centres[2] + 3]] = True  # blobs 0 and 2 hold a labelled image
    assert select_indices(x, 2, "typiclust", exclude=exclude).tolist() == [centres[1], centres[3]]
    # a blob of 4 (<= MIN_CLUSTER_SIZE) gets no pick: the 4th pick is the largest blob's second
    x, blob, centres = _blobs([120, 80, 50, 4])
    picks = select_indices(x, 4, "typiclust")
    assert picks[:3].tolist() == centres[:3] and blob[picks[3]] == 0


def test_bad_budget_and_strategy_are_user_errors():
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    exclude = np.zeros(10, bool)
    exclude[:4] = True
    with pytest.raises(ReplearnError, match=r"budget 7 is not possible: 6 image\(s\) are available") as e:
        select_indices(x, 7, "random", exclude=exclude)
    assert e.value.hint == "ask for 1 to 6"
    with pytest.raises(ReplearnError, match="budget 0 is not possible"):
        select_indices(x, 0, "kcenter")
    with pytest.raises(ReplearnError, match="unknown selection strategy 'typical'") as e:
        select_indices(x, 2, "typical")
    assert e.value.hint == "use one of typiclust, kcenter, random"


def test_select_writes_the_csv_and_reads_exclusions(tmp_path, capsys):
    x, blob, centres = _blobs([120, 80, 50, 30])
    ids = [f"img{i:03d}" for i in range(len(x))]
    labels = blob.copy()
    labels[centres[3]] = -1  # unknown label: an empty cell
    emb = tmp_path / "emb.npz"
    _write(emb, x, ids, labels, {"data": "fashion-mnist", "split": "train"})
    out = select(emb, budget=4, strategy="typiclust", out=str(tmp_path / "pick.csv"))
    rows = list(csv.DictReader(open(out)))
    assert [(r["rank"], r["id"], r["path"], r["label"]) for r in rows] == [
        ("1", ids[centres[0]], ids[centres[0]], "0"), ("2", ids[centres[1]], ids[centres[1]], "1"),
        ("3", ids[centres[2]], ids[centres[2]], "2"), ("4", ids[centres[3]], ids[centres[3]], "")]
    assert f"picked 4 of {len(x)} images by typiclust (seed 0)" in capsys.readouterr().out
    # the written CSV serves as --exclude of the next round (its column id)
    more = select(emb, budget=5, strategy="kcenter", exclude=str(out), out=str(tmp_path / "more.csv"))
    picked = {r["id"] for r in csv.DictReader(open(more))}
    assert len(picked) == 5 and not picked & {r["id"] for r in rows}
    assert "4 already labelled" in capsys.readouterr().out


def test_exclude_matches_folder_paths_and_names_unknown_ids(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    ids = ["a/1.png", "a/2.png", "b/1.png", "b/2.png", "c/1.png", "c/2.png"]
    emb = tmp_path / "emb.npz"
    _write(emb, x, ids, np.full(6, -1), {"data": str(folder), "split": "train"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "done.csv").write_text(f"path\na/1.png\n{folder / 'b/1.png'}\nimages/c/1.png\n")
    out = select(emb, budget=3, strategy="random", exclude="done.csv", out="next.csv")
    rows = list(csv.DictReader(open(out)))
    assert {r["id"] for r in rows} == {"a/2.png", "b/2.png", "c/2.png"}  # id, absolute, relative path
    assert all(r["path"] == str(folder / r["id"]) and r["label"] == "" for r in rows)
    (tmp_path / "bad.csv").write_text("id\na/1.png\nz/9.png\nz/8.png\n")
    with pytest.raises(ReplearnError, match=r"id 'z/9.png' is not in the embeddings \(nor are 1 more\); 1 of 3 matched"):
        select(emb, budget=1, exclude="bad.csv", out="x.csv")
    (tmp_path / "nocol.csv").write_text("name\na/1.png\n")
    with pytest.raises(ReplearnError, match="no column 'id' or 'path' \\(it has name\\)"):
        select(emb, budget=1, exclude="nocol.csv", out="x.csv")
    assert not (tmp_path / "x.csv").exists()
