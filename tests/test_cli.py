"""The command line: one-line errors for a user's mistakes, and the whole path on real files."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from imagefactory import make_bad_image_folder
from replearn.cli.main import main
from replearn.config import PretrainConfig, make_config
from replearn.errors import ReplearnError


def _cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    return p.returncode, p.stdout, p.stderr


def _one_line_error(code, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_config_typo_names_the_right_key(capsys):
    with pytest.raises(ReplearnError, match="unknown option 'batchsize'.*") as e:
        make_config(PretrainConfig, None, {"batchsize": 3})
    assert "did you mean 'batch-size'" in str(e.value)
    code = main(["pretrain", "--temprature", "0.5", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown option '--temprature'" in err and "did you mean 'temperature'" in err


def test_yaml_typo_and_wrong_type(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    cfg.write_text("epochs: three\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    assert "epochs must be a whole number, not 'three'" in capsys.readouterr().err
    assert main(["pretrain", "--optimizer", "adam"]) == 2
    assert "optimizer must be one of adamw, sgd" in capsys.readouterr().err


def test_wrong_path_and_empty_folder_give_one_line_errors(tmp_path):
    line = _one_line_error(*_cli("pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))[::2])
    assert "nope" in line and "hint:" in line
    (tmp_path / "empty").mkdir()
    line = _one_line_error(*_cli("pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))[::2])
    assert "no images" in line
    line = _one_line_error(*_cli("pretrain", "--method", "simclrr")[::2])
    assert "did you mean 'simclr'" in line
    line = _one_line_error(*_cli("evaluate", str(tmp_path / "nothing"))[::2])
    assert "no encoder" in line


def test_help_shows_an_example():
    code, out, _ = _cli("pretrain", "--help")
    assert code == 0 and "example:" in out and "--batch-size" in out


@pytest.mark.slow
def test_bad_image_folder_end_to_end(tmp_path):
    """pretrain -> evaluate -> embed on a folder holding every kind of bad image."""
    folder = tmp_path / "images"
    expected = make_bad_image_folder(folder)
    run = tmp_path / "run"
    code, out, err = _cli("pretrain", "--data", str(folder), "--out", str(run), "--epochs", "1", "--batch-size", "4",
                          "--width", "4", "--image-size", "16", "--precision", "32")
    assert code == 0, err
    n_bad = len(expected["bad"])
    assert f"skipped {n_bad} image(s); the list and the reasons are in" in out
    rows = list(csv.DictReader(open(run / "skipped.csv")))
    assert sorted(r["path"] for r in rows) == sorted(expected["bad"])
    for r in rows:
        assert expected["bad"][r["path"]] in r["reason"]
    assert json.loads((run / "meta.json").read_text())["images"] == len(expected["good"])
    for suffix in ("npz", "parquet"):
        emb = tmp_path / f"emb.{suffix}"
        code, out, err = _cli("embed", str(run), "--data", str(folder), "--out", str(emb))
        assert code == 0, err
        from replearn.embed.export import read_embeddings

        e, ids, labels = read_embeddings(emb)
        assert sorted(ids) == sorted(expected["good"]) and e.shape == (len(ids), 8 * 4) and e.dtype == np.float32
        assert (labels == -1).all()  # an unlabelled folder


def test_methods_and_results_commands(tmp_path, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "convnet" in out and "fashion-mnist" in out and "simclr-small" in out
    a, b = tmp_path / "a", tmp_path / "b"
    for run, knn in ((a, 81.25), (b, 78.5)):
        run.mkdir()
        (run / "eval.json").write_text(json.dumps(
            {"knn": knn, "linear": 88.0, "few_label": {"40": {"mean": 60.0, "min": 55.0, "max": 65.0}},
             "encoder": run.name}))
    assert main(["results", str(a), str(b)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["encoder", "kNN", "linear"]
    assert rows[2].split()[:3] == ["a", "81.2", "88.0"] and rows[3].split()[:2] == ["b", "78.5"]
    assert "60.0 [55.0, 65.0]" in rows[2]
    assert main(["results", str(tmp_path / "missing")]) == 2
    assert "no eval.json" in capsys.readouterr().err


def test_method_args_from_the_command_line_and_yaml(tmp_path, capsys):
    cfg = make_config(PretrainConfig, None, {"method_args": "queue_size=4096,momentum=0.99,name=x"})
    assert cfg.method_args == {"queue_size": 4096, "momentum": 0.99, "name": "x"}
    with pytest.raises(ReplearnError, match="key=value pairs"):
        make_config(PretrainConfig, None, {"method_args": "queue_size"})
    y = tmp_path / "c.yaml"
    y.write_text("method_args:\n  queue_size: 1024\n")
    assert make_config(PretrainConfig, y).method_args == {"queue_size": 1024}
    # the command line adds to the file's mapping; lists go in brackets
    both = make_config(PretrainConfig, y, {"method_args": "n_clusters=[50,100],momentum=0.9"})
    assert both.method_args == {"queue_size": 1024, "n_clusters": [50, 100], "momentum": 0.9}
    # a key the method does not take is a one-line error naming the closest one
    code = main(["pretrain", "--data", "digits", "--method", "simclr", "--method-args", "temprature=1",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "method simclr has no argument 'temprature'" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_every_command_has_its_python_twin_and_stays_a_function():
    """replearn.NAME is the function of the command NAME, also after the subpackage of the same
    name (replearn.embed, replearn.evaluate, replearn.report) has been imported; importing replearn
    loads none of Lightning, torchvision or FAISS."""
    code = (
        "import sys, replearn\n"
        "heavy = [m for m in ('lightning', 'torchvision', 'faiss') if m in sys.modules]\n"
        "fns = [getattr(replearn, n) for n in replearn.__all__ if n != '__version__']\n"
        "import replearn.embed.select, replearn.evaluate.knn, replearn.report.page\n"
        "again = [getattr(replearn, n) for n in replearn.__all__ if n != '__version__']\n"
        "print(heavy, all(callable(f) and f.__name__ == n for f, n in zip(again, replearn.__all__[1:])), fns == again)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["[]", "True", "True"], p.stderr
    import replearn
    from replearn.cli.main import CONFIGS

    assert sorted(CONFIGS) == sorted(n for n in replearn.__all__ if n != "__version__")
