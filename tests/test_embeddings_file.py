"""Embeddings files: the round trip with metadata, and every kind of wrong file is a one-line error
of each command that reads one (duplicates, select, index)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from replearn.embed.export import _write, load_embeddings
from replearn.errors import ReplearnError


@pytest.mark.parametrize("suffix", ["npz", "parquet"])
def test_round_trip_keeps_vectors_ids_labels_and_meta(tmp_path, suffix):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    meta = {"run": "/runs/x", "data": "fashion-mnist", "split": "test", "image_size": 28, "channels": 1}
    path = tmp_path / f"e.{suffix}"
    _write(path, emb, ["a", "b", "c", "d"], np.array([0, -1, 2, 1]), meta)
    e = load_embeddings(path)
    np.testing.assert_array_equal(e.vectors, emb)
    assert e.ids == ["a", "b", "c", "d"] and e.labels.tolist() == [0, -1, 2, 1] and e.meta == meta
    assert e.row_of()["c"] == 2 and e.file_of(1) == "b" and e.dim == 3 and len(e) == 4


def test_file_of_joins_a_folder_and_the_id(tmp_path):
    path = tmp_path / "e.npz"
    _write(path, np.ones((1, 2), np.float32), ["cat/1.png"], np.array([-1]), {"data": str(tmp_path)})
    assert load_embeddings(path).file_of(0) == str(tmp_path / "cat/1.png")


def _bad_files(tmp_path):
    """(file, what the message must say) for each kind of wrong embeddings file."""
    files = []
    p = tmp_path / "vector.npz"
    np.savez(p, embeddings=np.ones(5, np.float32), ids=np.array(list("abcde")), labels=np.zeros(5, np.int64))
    files.append((p, "2-D array"))
    p = tmp_path / "strings.npz"
    np.savez(p, embeddings=np.array([["x", "y"]]), ids=np.array(["a"]), labels=np.zeros(1, np.int64))
    files.append((p, "2-D array of numbers"))
    p = tmp_path / "fewer_ids.npz"
    np.savez(p, embeddings=np.ones((3, 2), np.float32), ids=np.array(["a", "b"]), labels=np.zeros(3, np.int64))
    files.append((p, "3 embeddings but 2 ids"))
    p = tmp_path / "no_ids.npz"
    np.savez(p, embeddings=np.ones((3, 2), np.float32))
    files.append((p, "it has no ids"))
    p = tmp_path / "twice.npz"
    np.savez(p, embeddings=np.ones((2, 2), np.float32), ids=np.array(["a", "a"]), labels=np.zeros(2, np.int64))
    files.append((p, "'a' appears more than once"))
    p = tmp_path / "nan.npz"
    np.savez(p, embeddings=np.array([[np.nan, 1.0]], np.float32), ids=np.array(["a"]), labels=np.zeros(1, np.int64))
    files.append((p, "NaN or inf"))
    p = tmp_path / "text.npz"
    p.write_text("not a zip file")
    files.append((p, "cannot be read"))
    p = tmp_path / "table.csv"
    p.write_text("a,b\n1,2\n")
    files.append((p, "unknown embeddings format '.csv'"))
    files.append((tmp_path / "missing.npz", "no embeddings file"))
    files.append((tmp_path, "is a folder"))
    return files


def test_every_wrong_file_is_a_replearn_error(tmp_path):
    for path, said in _bad_files(tmp_path):
        with pytest.raises(ReplearnError, match=said.replace("(", r"\(").replace(".", r"\.")):
            load_embeddings(path)


@pytest.mark.parametrize("command", [["duplicates"], ["select", "--budget", "1"], ["index"]])
def test_commands_say_it_in_one_line(tmp_path, command):
    for path, said in _bad_files(tmp_path)[::3]:  # a few kinds per command keep it quick
        p = subprocess.run([sys.executable, "-m", "replearn", command[0], str(path), *command[1:],
                            "--out", str(tmp_path / ("o.index" if command[0] == "index" else "o.csv"))],
                           capture_output=True, text=True, timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and said in lines[0] and "hint:" in lines[0], p.stderr
