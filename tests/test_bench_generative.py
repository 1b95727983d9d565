"""bench/generative.py's table on fake runs (no training): means over seeds and the comparison with vae."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import generative as bench  # noqa: E402


def _row(method, seed, mig, score):
    dis = {"mig": {"mig": mig}, "factorvae": {"score": score}}
    return {"name": f"{method}-s{seed}", "method": method, "seed": seed, "train_cmd": f"replearn pretrain {method}",
            "eval": {"disentanglement": dis, "knn": 80.0, "linear": 60.0}, "train_seconds": 100.0, "git_commit": "abc1234def"}


def _line(text, name):
    return next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))


def test_table_means_over_seeds_and_beats_vae_only_on_both_measures():
    rows = [_row("vae", 0, 0.10, 0.60), _row("vae", 1, 0.20, 0.70),  # means 0.15, 0.65
            _row("betavae", 0, 0.30, 0.70), _row("betavae", 1, 0.10, 0.62),  # 0.20, 0.66: beats on both
            _row("factorvae", 0, 0.40, 0.50), _row("factorvae", 1, 0.40, 0.60),  # 0.40, 0.55: MIG only
            {"name": "ladder-s0", "method": "ladder", "seed": 0, "error": "boom"}]
    summary = {"machine": "m", "date": "d", "parallel": 3, "threads": 1, "rows": rows}
    per = bench.summarise(rows)
    assert per["vae"]["mig"]["mean"] == pytest.approx(0.15) and per["vae"]["factorvae"]["max"] == 0.70
    assert "ladder" not in per  # a failed run has no row
    text = bench.table(summary)
    assert _line(text, "vae").startswith("| vae | 0,1 | 0.150 [0.100, 0.200] | 0.650 [0.600, 0.700] |")
    assert _line(text, "betavae").split("|")[8].strip() == "yes"
    assert _line(text, "factorvae").split("|")[8].strip() == "**no**"
    assert "abc1234" in _line(text, "vae") and "`replearn pretrain vae` (and `--seed 1`, `--seed 2`)" in text
