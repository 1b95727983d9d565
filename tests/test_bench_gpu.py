"""bench/gpu.py on the CPU: its windows and clock against hand figures, and the whole bench (both
replearn and lightly on ResNet-18 at 32 px, the GPU setting at a tiny batch) writing its section."""

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu  # noqa: E402


def test_windows_end_at_the_last_warmup_step_and_split_the_rest():
    assert gpu.window_ends(10, 107, 4) == [9, 36, 63, 89, 116]  # 9 + round(k * 26.75)
    assert gpu.window_ends(1, 3, 1) == [0, 3]


def test_clock_synchronises_the_gpu_at_window_edges_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append(1))
    clock = gpu.Clock("cuda", gpu.window_ends(2, 6, 2))  # edges 1, 4, 7
    clock.start()
    for i in range(8):
        clock.step_end(i)
    assert len(calls) == 1 + 3 and sorted(clock.ends) == [1, 4, 7]
    calls.clear()
    cpu = gpu.Clock("cpu", [0, 1])
    cpu.start()
    cpu.step_end(0)
    assert calls == [] and list(cpu.ends) == [0]


def test_summarize_gives_views_per_second_of_each_window_and_the_epoch():
    class A:
        warmup, steps, repeats, batch_size = 2, 4, 2, 8

    # ends of steps 1, 3 and 5; the epoch started at t = 0.5
    res = {"name": "x", "t0": 0.5, "ends": {"1": 1.0, "3": 2.0, "5": 2.5}, "rss_mib": 1.0, "device_mib": None}
    r = gpu.summarize(res, A, views_per_image=2)
    assert r["min"] == pytest.approx(2 * 16 / 1.0) and r["max"] == pytest.approx(2 * 16 / 0.5)
    assert r["mean"] == pytest.approx((32 + 64) / 2)
    assert r["step_s"] == pytest.approx(1.5 / 4) and r["epoch_s"] == pytest.approx(2.0)


@pytest.mark.slow
def test_the_bench_runs_both_contenders_at_the_gpu_setting_on_the_cpu(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    gpu.main(["--device", "cpu", "--backbone", "resnet18", "--image-size", "32", "--batch-size", "8", "--limit", "32",
              "--warmup", "1", "--repeats", "3", "--workers", "0", "--threads", "2",
              "--only", "replearn-fp32", "lightly-fp32", "--write", str(doc)])
    text = doc.read_text()
    assert "kept" in text and "<!-- gpu:start -->" in text and "<!-- gpu:end -->" in text
    # ResNet-18 (small stem) at 32 px: 0.56 G multiply-adds forward, so about 3 x 1.1 GFLOP forward + backward
    per_view = float(re.search(r"Backbone forward \+ backward: ([\d.]+) GFLOP per view", text).group(1))
    assert 3.0 < per_view < 3.6
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (replearn-fp32|lightly-fp32) \| (\d+) \|", text, re.M)}
    assert set(rows) == {"replearn-fp32", "lightly-fp32"} and all(int(v) > 0 for v in rows.values())
    assert re.search(r"^\| replearn-fp32 .*\| [\d.]+x \|$", text, re.M)  # divided by lightly's figure
    assert re.search(r"^\| lightly-fp32 .*\| ref \|$", text, re.M)
