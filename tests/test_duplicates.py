"""Near-duplicate groups: pairs against a naive float64 loop, the star grouping worked by hand, and
planted copies in a real image folder found through pretrain -> embed -> duplicates."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from imagefactory import make_duplicate_folder
from replearn.embed.duplicates import find_duplicates, similar_pairs, star_groups
from replearn.errors import ReplearnError


def _naive_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    x = x.astype(np.float64)
    out = set()
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            cos = x[a] @ x[b] / (np.linalg.norm(x[a]) * np.linalg.norm(x[b]))
            if cos >= threshold:
                out.add((a, b))
    return out


def _clustered(n_centres=30, per=(1, 4), dim=16, noise=0.02, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    rows = [c + noise * rng.standard_normal((int(rng.integers(*per)), dim)) for c in centres]
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.99, 0.9, 0.5])
def test_exact_pairs_match_a_naive_loop(threshold):
    x = _clustered()
    i, j, s = similar_pairs(x, threshold)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _naive_pairs(x, threshold)
    assert (i < j).all()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(s, (xn[i] * xn[j]).sum(1), atol=1e-5)


def test_approximate_path_finds_the_same_pairs_on_clustered_data():
    x = _clustered(n_centres=60)
    i, j, _ = similar_pairs(x, 0.95, exact_max=0)  # forces the HNSW path
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _naive_pairs(x, 0.95)


def test_star_groups_worked_by_hand():
    # 0-1, 0-2, 0-3 (a star around 0), 3-4 (a chain off it), 5-6 (a pair), 7 alone.
    i = np.array([0, 0, 0, 3, 5])
    j = np.array([1, 2, 3, 4, 6])
    s = np.array([0.99, 0.98, 0.97, 0.96, 0.95])
    groups = star_groups(8, i, j, s)
    # 0 has the most partners: it takes 1, 2, 3. 4's only partner (3) is taken: 4 stays alone (no
    # chaining through 3). Then 5 and 6 tie on one partner and similarity: the lower row leads.
    assert groups == [(0, [(0, 1.0), (1, 0.99), (2, 0.98), (3, 0.97)]), (5, [(5, 1.0), (6, 0.95)])]


def test_no_chaining_through_a_dense_line():
    # Points on a line 0.1 apart (as angles): each is within the threshold of its neighbours only.
    angles = np.arange(7) * 0.1
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    threshold = float(np.cos(0.1)) - 1e-4  # neighbours only
    groups = find_duplicates(x, threshold)
    for rep, members in groups:
        for m, sim in members:  # every member within the threshold of its representative
            assert abs(m - rep) <= 1 and sim >= threshold
    grouped = [m for _, members in groups for m, _ in members]
    assert len(grouped) == len(set(grouped))  # no image in two groups
    # single linkage would make one chain of 7; stars hold at most 3 (a point and its neighbours)
    assert len(groups) == 2 and all(len(members) == 3 for _, members in groups)


def test_bad_threshold_is_a_user_error():
    with pytest.raises(ReplearnError, match="threshold"):
        find_duplicates(np.ones((3, 2), np.float32), 1.5)


@pytest.mark.slow
def test_planted_copies_in_a_folder_are_found_and_nothing_else(tmp_path):
    """pretrain (2 epochs) -> embed -> duplicates on 40 distinct images and 5 planted copies (two
    exact, one 5% brighter, one JPEG q90, one cropped by a pixel): every copy lands in one group
    with its original, and no other image is in any group."""
    folder = tmp_path / "images"
    copies = make_duplicate_folder(folder)
    run, emb, dups = tmp_path / "run", tmp_path / "emb.npz", tmp_path / "dups.csv"

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stdout

    # flatconv keeps where things are in the image (no global pooling): distinct layouts stay apart
    cli("pretrain", "--data", str(folder), "--out", str(run), "--epochs", "2", "--batch-size", "16", "--width", "8",
        "--image-size", "32", "--backbone", "flatconv", "--precision", "32")
    cli("embed", str(run), "--data", str(folder), "--out", str(emb))
    out = cli("duplicates", str(emb), "--threshold", "0.9", "--out", str(dups))
    assert "4 group(s) of near-duplicates holding 9 of 45 images (5 could go" in out
    rows = list(csv.DictReader(open(dups)))
    groups = defaultdict(set)
    for r in rows:
        groups[r["group"]].add(r["id"])
        assert r["path"] == str(folder / r["id"])
        assert float(r["similarity"]) >= 0.9
    expected = defaultdict(set)
    for copy, original in copies.items():
        expected[original] |= {copy, original}
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, expected.values()))
