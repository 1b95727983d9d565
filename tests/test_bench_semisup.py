"""bench/semisup.py's step calibration and its table, on fake runs (no training)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import semisup as bench  # noqa: E402


def test_calibrate_fits_the_slowest_measured_step_into_the_minutes(monkeypatch, tmp_path):
    seen = []

    def fake_job(row, per_class, seed, args, steps=None, root=None):
        seen.append((row, per_class, seed, steps, root))
        per_step = {"fixmatch": 0.5, "supervised": 0.05 if seed == 0 else 0.1}[row]  # the second supervised is slower
        return {"row": row, "train_seconds": per_step * steps, "steps": steps}

    monkeypatch.setattr(bench, "job", fake_job)
    todo = [(r, k, s) for r in ("supervised", "fixmatch") for k in (4, 25) for s in (0, 1)]
    args = SimpleNamespace(minutes=2.0, parallel=3)
    steps = bench.calibrate(["supervised", "fixmatch"], todo, args, tmp_path)
    # one calibration run per row first, then more up to --parallel, all of CALIBRATION_STEPS, under root
    assert [t[:3] for t in seen] == [("supervised", 4, 0), ("fixmatch", 4, 0), ("supervised", 4, 1)]
    assert all(t[3] == bench.CALIBRATION_STEPS and t[4] == tmp_path for t in seen)
    assert steps == {"supervised": 1200, "fixmatch": 240}  # 120 s over the slower 0.1 s, and over 0.5 s
    monkeypatch.setattr(bench, "job", lambda *a, **k: {"row": a[0], "error": "boom"})
    with pytest.raises(SystemExit, match="calibration of supervised failed: boom"):
        bench.calibrate(["supervised"], todo, args, tmp_path)


def test_table_says_whether_each_row_beats_supervised_and_the_minutes():
    def run(row, k, seed, acc):
        return {"row": row, "per_class": k, "seed": seed, "accuracy": acc, "train_seconds": 10.0, "steps": 100,
                "commit": "abc1234", "jobs_at_once": 1, "cmd": f"replearn semisup {row}"}

    summary = {"machine": "m", "date": "d", "minutes": {"fixmatch": 6},
               "runs": [run("supervised", 4, 0, 60.0), run("supervised", 4, 1, 62.0), run("supervised", 25, 0, 80.0),
                        run("fixmatch", 4, 0, 70.0), run("fixmatch", 25, 0, 79.0)]}
    text = bench.table(summary)
    row = next(ln for ln in text.splitlines() if ln.startswith("| fixmatch |"))
    assert "70.0 [70.0, 70.0] (n=1)" in row and "yes (+9.0) / no (-1.0)" in row
    assert "budget of 6 min (fixmatch)" in text and "One run at a time." in text
