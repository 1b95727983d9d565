"""bench/metric.py's table on fake runs (no training): seeds aggregated, the comparison with the
self-supervised encoder's Recall@1."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import metric as bench  # noqa: E402


def _row(name, r1, mapr=40.0):
    ret = {"recall@1": r1, "recall@2": 96.0, "recall@4": 98.0, "recall@8": 99.0, "map@r": mapr, "queries": 5000}
    return {"name": name, "eval": {"retrieval": ret, "knn": 85.0}, "train_seconds": 100.0, "commit": "abc1234"}


def _summary(rows):
    return {"machine": "m", "date": "d", "jobs_at_once": 2, "threads": 1, "queries": 5000, "rows": rows}


def _line(text, name):
    return next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))


def test_table_aggregates_seeds_and_compares_with_the_self_supervised_encoder():
    seed0 = _summary([_row("raw", 90.0), _row("ssl", 93.0, 51.0), _row("supcon", 92.5), _row("supcon+init", 94.0),
                      _row("arcface+init", 93.5), {"name": "triplet", "error": "boom"}])
    seed1 = _summary([_row("supcon+init", 93.5, 44.0), _row("arcface+init", 92.0)])
    seed2 = _summary([_row("supcon+init", 94.5, 46.0), _row("arcface+init", 93.9)])
    text = bench.table(seed0, [seed1, seed2])
    # mean [min, max] over the three seeds; MAP@R too
    assert _line(text, "supcon+init").split(" | ")[1] == "94.0 [93.5, 94.5] (n=3)"
    assert _line(text, "supcon+init").split(" | ")[5] == "43.3 [40.0, 46.0] (n=3)"
    assert "yes (+1.0, every seed)" in _line(text, "supcon+init")
    # above on the mean (93.13 > 93) but one seed below: said so
    assert "yes (+0.1, mean)" in _line(text, "arcface+init")
    assert "**no** (-0.5)" in _line(text, "supcon")  # a single seed below the encoder
    assert _line(text, "ssl").split(" | ")[7] == ""  # the reference rows are not compared with themselves
    assert "failed: see triplet/*.log" in _line(text, "triplet")
