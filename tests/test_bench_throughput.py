"""bench/throughput.py without timing anything: the FLOP counting (a conv and a matmul against
their hand counts, every method's step and backbone), lightly's loop of each paired method on a
few images, and the report from fake rows merged from two runs."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from replearn.data import ImageSet
from replearn.methods import METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import throughput as bench  # noqa: E402


def _fake_data(n: int = 1024) -> ImageSet:
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageSet(ids=[str(i) for i in range(n)], labels=torch.zeros(n, dtype=torch.long), name="fake", channels=1,
                    size=28, images=images, mean=(0.29,), std=(0.35,))


def test_conv_flops_match_the_hand_count():
    n, cin, cout, k, h, w = 2, 3, 8, 3, 10, 12
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)  # "same" padding: the output is h x w
    x = torch.randn(n, cin, h, w)
    forward = 2 * n * cout * cin * k * k * h * w  # 2 FLOPs per multiply-add
    assert bench.count_flops(lambda: conv(x)) == forward
    # backward: the weight's gradient costs a forward; the input's another, only when it needs one
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 2 * forward
    xg = x.clone().requires_grad_()
    assert bench.count_flops(lambda: conv(xg).sum().backward()) == 3 * forward


def test_matmul_flops_match_the_hand_count():
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert bench.count_flops(lambda: a @ b) == 2 * 5 * 7 * 3


def test_backbone_flops_per_view_match_the_convnet_by_hand():
    # convnet, width 32, 28 px: 3x3 convs 1->32 @ 28x28, 32->64 @ 14x14, 64->128 @ 7x7, 128->256 @ 3x3
    macs = [32 * 1 * 9 * 28 * 28, 64 * 32 * 9 * 14 * 14, 128 * 64 * 9 * 7 * 7, 256 * 128 * 9 * 3 * 3]
    fwd = 2 * sum(macs)
    fwd_bwd = 3 * fwd - 2 * macs[0]  # backward = 2 x forward, less the first conv's input gradient
    f = bench.method_flops("simclr", _fake_data(), 8)
    assert f["views"] == 2
    assert f["backbone_per_view"] == fwd_bwd
    assert f["backbone_per_image"] == 2 * fwd_bwd
    assert f["step_per_image"] > f["backbone_per_image"]  # the head and the loss on top


@pytest.mark.parametrize("method", list(bench.BENCH_METHODS))
def test_every_method_counts_its_declared_views(method):
    # method_flops raises when make_views gives another number of views than BENCH_METHODS says
    f = bench.method_flops(method, _fake_data(), 16)
    assert f["views"] == bench.BENCH_METHODS[method].views
    assert 0 < f["backbone_per_view"] <= f["backbone_per_image"]
    assert f["step_per_image"] > 0


def test_every_registered_method_is_benched_or_left_out_with_a_reason():
    assert set(METHODS.names()) == set(bench.BENCH_METHODS) | set(bench.LEFT_OUT)
    for name in bench.LEFT_OUT:
        assert name in bench.LEFT_OUT_TEXT
    # the methods lightly lacks run replearn's contenders only
    for name, (fw, _, method) in bench.CONTENDERS.items():
        assert bench.BENCH_METHODS[method].lightly or fw == "replearn", name
    assert bench._methods(["replearn-only", "simclr"])[0] == "simclr"
    assert set(bench._methods(["paired"])) == {"simclr", "moco", "byol", "swav", "simsiam", "barlow", "vicreg", "dino"}


@pytest.mark.parametrize("method", bench.METHOD_GROUPS["paired"])
def test_lightly_loop_runs_one_step(method):
    from PIL import Image

    torch.manual_seed(0)
    data = _fake_data(8)
    transform = bench._lightly_transform(method, data)
    per_image = [transform(Image.fromarray(data.images[i, 0].numpy())) for i in range(8)]
    views = [torch.stack(v) for v in zip(*per_image, strict=True)]
    assert len(views) == bench.BENCH_METHODS[method].views
    model, step = bench._lightly_model(method, data, steps=10)
    model.train()
    loss = step(views, 0)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert any(p.grad is not None for p in model.parameters())


def _row(name, mean, run=0):
    return {"name": name, "mean": mean, "min": mean * 0.9, "max": mean * 1.1, "step_s": 0.5, "in_step": 1.0,
            "rss": 1000.0, "child_rss": 400.0, "threads": 2, "precision": "32-true", "auto_precision": "bf16-mixed"}


def _run(peak_fp32, cmd):
    return {"command": cmd, "commit": "abc1234", "date": "2026-11-28 12:00 UTC", "load": [0.1, 0.2],
            "settings": {"steps": 30, "warmup": 3, "repeats": 3, "batch_size": 256, "threads": 2},
            "machine": {"cpu": "cpu", "cores": 2, "amx_bf16": False, "avx512_bf16": True},
            "versions": dict.fromkeys(("torch", "torchvision", "lightning", "lightly", "replearn"), "1"),
            "peak": {"fp32": peak_fp32, "bf16": 2e11, "size": 2048, "repeats": 5, "threads": 2}}


def _line(text, start):
    return next(ln for ln in text.splitlines() if ln.startswith(start))


def test_report_merges_runs_and_gives_the_flop_columns():
    flops = {"simclr": {"step_per_image": 124e6, "backbone_per_view": 60e6, "backbone_per_image": 120e6, "views": 2},
             "pirl": {"step_per_image": 159e6, "backbone_per_view": 15e6, "backbone_per_image": 150e6, "views": 10}}
    results = bench.new_results()
    bench.merge_results(results, _run(9e10, "first"), {"simclr": flops["simclr"]},
                        [_row("simclr/replearn-fp32", 1000.0), _row("simclr/lightly-w0", 500.0)])
    bench.merge_results(results, _run(1e11, "second"), {"pirl": flops["pirl"]},
                        [_row("pirl/replearn-fp32", 4000.0), _row("simclr/replearn-fp32", 1200.0)])
    text = bench.report(results)
    # the newer row of a contender replaces the older; both runs' commands are listed
    cells = _line(text, "| simclr | replearn-fp32 |").split(" | ")
    assert cells[3] == "1200" and cells[12] == "2.40x |"
    assert "`first`" in text and "`second`" in text
    # achieved = views/s x backbone FLOPs per view; shares of the best peak of both runs (1e11) and of bf16
    assert cells[7] == f"{1200 * 60e6 / 1e9:.1f}" and cells[8] == "72%" and cells[9] == "36%"
    pirl = _line(text, "| pirl | replearn-fp32 |").split(" | ")
    assert pirl[7] == "60.0" and pirl[12] == "n/a |"
    assert "fp32 **100 GFLOP/s**, bf16 **200 GFLOP/s**" in text
    assert "simclr 124 / 60.0 x 2" in text and "pirl 159 / 15.0 x 10" in text
    assert "clip (needs captions" in text


def test_report_flags_merged_runs_with_other_settings():
    results = bench.new_results()
    bench.merge_results(results, _run(1e11, "a"), {}, [_row("simclr/replearn-fp32", 1000.0)])
    other = _run(1e11, "b")
    other["settings"]["threads"] = 1
    bench.merge_results(results, other, {}, [_row("moco/replearn-fp32", 900.0)])
    text = bench.report(results)
    assert "differ in their settings" in text
    assert _line(text, "| moco | replearn-fp32 |").split(" | ")[7] == "–"  # no FLOP count for moco
