"""bench/evaluation.py's table on fake evaluations (no encoder pass): medians over repeats, the
speed-up against the sklearn path, the largest change of a figure."""

import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import evaluation as bench  # noqa: E402


def _row(name, total, knn=83.5, linear=88.3, few40=66.3):
    few = {"40": {"mean": few40, "min": few40 - 5, "max": few40 + 4}, "250": {"mean": 79.1, "min": 78.4, "max": 79.9}}
    return {"name": name, "wall": total + 3, "total": total, "features": total / 3, "knn": knn, "linear": linear,
            "C": 0.1, "few": few}


def _line(text, name):
    return next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))


def test_table_medians_ratios_and_figure_changes():
    rows = [_row("before", 60.0), _row("sklearn-path", 40.0), _row("fast-features", 30.0), _row("replearn", 10.0, knn=83.4, few40=66.1),
            _row("before", 64.0), _row("sklearn-path", 44.0), _row("fast-features", 32.0), _row("replearn", 12.0, knn=83.4, few40=66.1)]
    text = bench.table(rows, Namespace(run="runs/demo", data="fashion-mnist", repeats=2), "2026-11-28 12:00 UTC")
    assert "| 42.0 | 40.0, 44.0 |" in _line(text, "sklearn-path") and "1.00x" in _line(text, "sklearn-path")
    assert "| 11.0 | 10.0, 12.0 |" in _line(text, "replearn") and "3.82x |" in _line(text, "replearn")
    assert "replearn: **3.82x** the sklearn path's speed" in text
    assert "replearn against before: **5.64x**" in text  # median 62 / 11
    assert "largest change of a figure, replearn against the sklearn path: **0.20 points**" in text  # 40-label mean
    assert "figures identical across repeats: yes" in text
    rows[-1]["knn"] = 80.0
    assert "figures identical across repeats: no" in bench.table(rows, Namespace(run="r", data="d", repeats=2), "now")
