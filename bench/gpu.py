"""Pretraining on one GPU: replearn against lightly on the same device in the same run, SimCLR on
ResNet-18 with the small stem at 32 x 32 px, batch 512, one whole Fashion-MNIST epoch per contender.

    python bench/gpu.py                                  # on a machine with CUDA: ~1 minute a contender
    python bench/gpu.py --write docs/benchmarks.md       # the "gpu" section of the benchmarks page
    python bench/gpu.py --device cpu --backbone convnet --image-size 28 --batch-size 32 --limit 320 --warmup 2
                                                         # the same code on the CPU, as the tests run it

Contenders, each in its own process (its peak memory is its own):
- ``replearn-bf16`` and ``replearn-fp32``: the user path, ``replearn.train.run.pretrain`` (the
  images resident on the GPU as uint8, views made there, channels_last, fused AdamW);
- ``replearn-bf16-compile`` with ``--compile``: the same with ``torch.compile`` of the backbone;
- ``lightly-fp32``: lightly's documented loop (``bench/throughput.py``: PIL images, its per-image
  ``SimCLRTransform`` in ``--workers`` DataLoader workers, pinned memory, the batch copied to the
  GPU, one forward per view, ``NTXentLoss``) with the same backbone, head, loss and AdamW;
- ``lightly-bf16``: the same loop under ``torch.autocast(bfloat16)``, what a user would add.

Timing: the GPU works ahead of the host, so each process synchronises the device at the edges of
the timed windows only (end of the last warm-up step, then every ``steps / repeats`` steps), not
at every step; views/s is the mean over the windows with their range. *s per epoch* is the whole
epoch as a user waits for it: from the start of the epoch (DataLoader workers starting, the first
batch fetched, warm-up and autotuning included) to the end of its last step, synchronised.

FLOP floor: one more process counts the backbone's forward + backward FLOPs per view with
``torch.utils.flop_counter`` (fp32, on the CPU, outside any timed loop) and measures the device's
matmul peak (``bench/throughput.py``'s ``peak_matmul``: ``torch.mm`` of two 8192 x 8192 matrices on
a GPU, 2048 on a CPU; fp32 and bf16; best of 10 after a warm-up). Each row's backbone FLOP/s = views/s x FLOPs per view, and its share of each
peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402
from zoo import git_commit, machine, write_marked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_TRAIN = 60_000
CONTENDERS = {
    "replearn-bf16": ("replearn", "bf16"),
    "replearn-fp32": ("replearn", "32"),
    "replearn-bf16-compile": ("replearn", "bf16"),
    "lightly-fp32": ("lightly", "32"),
    "lightly-bf16": ("lightly", "bf16"),
}


# --------------------------------------------------------------------------- child: one contender


def window_ends(warmup: int, steps: int, repeats: int) -> list[int]:
    """The step indices whose ends bound the timed windows: the last warm-up step, then every
    ``steps / repeats`` steady steps (rounded), the last being the run's last step."""
    return [warmup - 1 + round(k * steps / repeats) for k in range(repeats + 1)]


class Clock:
    """Stamps step ends; on a GPU it synchronises the device first, at the window edges only."""

    def __init__(self, device: str, edges: list[int]):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.edges, self.ends, self.t0 = set(edges), {}, None

    def start(self) -> None:
        self.sync()
        self.t0 = time.perf_counter()

    def step_end(self, i: int) -> None:
        if i in self.edges:
            self.sync()
            self.ends[i] = time.perf_counter()


def _data(a):
    import torch

    from replearn.data import load_data

    data = load_data("fashion-mnist", "train", image_size=a.image_size)
    return data.subset(torch.arange(a.limit)) if a.limit else data


def _replearn(a, setting: str, clock: Clock) -> None:
    import lightning.pytorch as pl

    from replearn.train.run import pretrain

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.step_end(batch_idx)

    with tempfile.TemporaryDirectory(prefix="replearn-bench-") as tmp:
        pretrain(
            data="fashion-mnist", method=a.method, backbone=a.backbone, width=tp.WIDTH, image_size=a.image_size,
            batch_size=a.batch_size, epochs=1, limit=a.limit, out=str(Path(tmp) / "run"), knn_monitor=False,
            precision=setting, accelerator="gpu" if a.device.startswith("cuda") else "cpu", devices="1",
            compile=a.child.endswith("-compile"), callbacks=[Timer()], proj_hidden=tp.PROJ_HIDDEN,
            proj_dim=tp.PROJ_DIM, method_args=tp.BENCH_METHODS[a.method].margs, **tp._options(a.method),
        )


def _lightly(a, setting: str, clock: Clock) -> None:
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    data = _data(a)
    cuda = a.device.startswith("cuda")
    loader = DataLoader(
        tp._PILImages(data.images, tp._lightly_transform(a.method, data)), batch_size=a.batch_size, shuffle=True,
        drop_last=True, num_workers=a.workers, pin_memory=cuda, persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    model, step = tp._lightly_model(a.method, data, len(loader), backbone_name=a.backbone)
    model.to(a.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tp.LR,
                                  weight_decay=tp.WEIGHT_DECAY)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=setting == "bf16")
    total = torch.zeros((), device=a.device)
    clock.start()
    for i, (views, _) in enumerate(loader):
        views = [v.to(a.device, non_blocking=True) for v in views]
        with autocast:
            loss = step(views, i)
        total += loss.detach().float().sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_end(i)
    if not torch.isfinite(total):
        raise RuntimeError("lightly's loss became non-finite")
    del loader


def child(a) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    framework, setting = CONTENDERS[a.child]
    clock = Clock(a.device, window_ends(a.warmup, a.steps, a.repeats))
    (_replearn if framework == "replearn" else _lightly)(a, setting, clock)
    cuda = a.device.startswith("cuda")
    print("BENCH-RESULT " + json.dumps({
        "name": a.child, "t0": clock.t0, "ends": {str(k): v for k, v in clock.ends.items()},
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }), flush=True)


def flops_child(a) -> None:
    import torch

    cuda = a.device.startswith("cuda")
    peak = tp.peak_matmul(a.threads or torch.get_num_threads(), 8192 if cuda else 2048, 10, a.device)
    f = tp.method_flops(a.method, _data(a), min(a.batch_size, 32), backbone_name=a.backbone)
    print("BENCH-FLOPS " + json.dumps({"peak": peak, "flops": f}), flush=True)


# --------------------------------------------------------------------------- parent: run and report


def summarize(res: dict, a, views_per_image: int) -> dict:
    ends = {int(k): v for k, v in res["ends"].items()}
    edges = window_ends(a.warmup, a.steps, a.repeats)
    views = views_per_image * a.batch_size
    rates = [views * (j - i) / (ends[j] - ends[i]) for i, j in zip(edges[:-1], edges[1:], strict=True)]
    steady = ends[edges[-1]] - ends[edges[0]]
    return {"name": res["name"], "mean": sum(rates) / len(rates), "min": min(rates), "max": max(rates),
            "step_s": steady / a.steps, "epoch_s": ends[edges[-1]] - res["t0"], "rss_mib": res["rss_mib"],
            "device_mib": res["device_mib"]}


def _sub(a, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra, "--device", a.device, "--method", a.method,
           "--backbone", a.backbone, "--image-size", str(a.image_size), "--batch-size", str(a.batch_size),
           "--limit", str(a.limit), "--warmup", str(a.warmup), "--steps", str(a.steps), "--repeats", str(a.repeats),
           "--workers", str(a.workers), "--threads", str(a.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tag = "BENCH-FLOPS" if "--child-flops" in extra else "BENCH-RESULT"
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith(tag + " ")), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise SystemExit(f"{' '.join(extra)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(line[len(tag) + 1:])


def report(rows: list[dict], fl: dict, a, meta: dict) -> str:
    peak, per_view = fl["peak"], fl["flops"]["backbone_per_view"]
    lightly = [r for r in rows if r["name"].startswith("lightly")]
    ref = max(lightly, key=lambda r: r["mean"]) if lightly else None
    views = tp.BENCH_METHODS[a.method].views
    images = a.limit or FASHION_MNIST_TRAIN
    lines = [
        f"- Machine: {meta['machine']}; device `{a.device}`",
        f"- Command: `{meta['command']}`; commit {meta['commit']}; {meta['date']}",
        f"- Setup: {a.method}, {a.backbone} (small stem where it has one) at {a.image_size} px, batch {a.batch_size} ({views} views "
        f"per image), one epoch of {images:,} images (warm-up steps: {a.warmup}, then {a.steps} timed steps in "
        f"{a.repeats} windows); heads {tp.PROJ_HIDDEN}->{tp.PROJ_DIM}, AdamW lr {tp.LR}; lightly's DataLoader workers: {a.workers}",
        f"- Backbone forward + backward: {per_view / 1e9:.2f} GFLOP per view (FlopCounterMode); matmul peak "
        f"({peak['size']}^2, best of {peak['repeats']}): fp32 {peak['fp32'] / 1e12:.1f} TFLOP/s, "
        f"bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s",
        "",
        "| contender | views/s (mean) | min–max over windows | s/step | s per epoch | backbone TFLOP/s | of fp32 peak "
        "| of bf16 peak | peak device MiB | peak RSS MiB | vs lightly's best |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        rate = r["mean"] * per_view
        ratio = "ref" if r is ref else (f"{r['mean'] / ref['mean']:.2f}x" if ref else "–")
        dev = f"{r['device_mib']:.0f}" if r["device_mib"] is not None else "–"
        lines.append(
            f"| {r['name']} | {r['mean']:.0f} | {r['min']:.0f}–{r['max']:.0f} | {r['step_s']:.4f} | {r['epoch_s']:.1f} "
            f"| {rate / 1e12:.2f} | {tp._pct(rate / peak['fp32'])} | {tp._pct(rate / peak['bf16'])} | {dev} "
            f"| {r['rss_mib']:.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (the default where there is one) or cpu")
    p.add_argument("--method", default="simclr", choices=tp.METHOD_GROUPS["paired"])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--limit", type=int, default=0, help="images of the epoch (default: all 60,000)")
    p.add_argument("--warmup", type=int, default=10, help="steps before the timed windows")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: the rest of the epoch)")
    p.add_argument("--repeats", type=int, default=4, help="windows the timed steps are split into")
    p.add_argument("--workers", type=int, default=min(16, len(os.sched_getaffinity(0))),
                   help="lightly's DataLoader workers (default: the cores, at most 16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's)")
    p.add_argument("--compile", action="store_true", help="add replearn-bf16-compile")
    p.add_argument("--only", nargs="+", choices=list(CONTENDERS), help="these contenders only")
    p.add_argument("--write", metavar="MARKDOWN", help="update the gpu section of this file")
    p.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--child-flops", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    steps_in_epoch = (a.limit or FASHION_MNIST_TRAIN) // a.batch_size
    a.steps = a.steps or steps_in_epoch - a.warmup
    if a.warmup < 1 or a.steps < a.repeats or a.warmup + a.steps > steps_in_epoch:
        p.error(f"need --warmup >= 1, --steps >= --repeats and warm-up + steps <= {steps_in_epoch} (the epoch's steps)")
    if a.child:
        child(a)
        return
    if a.child_flops:
        flops_child(a)
        return
    names = a.only or [n for n in CONTENDERS if a.compile or not n.endswith("-compile")]
    print(f"{machine()}; {a.method} on {a.backbone} at {a.image_size} px, batch {a.batch_size}, device {a.device}",
          flush=True)
    print("counting FLOPs and measuring the matmul peak ...", flush=True)
    fl = _sub(a, "--child-flops")
    rows = []
    for name in names:
        print(f"running {name} ...", flush=True)
        rows.append(summarize(_sub(a, "--child", name), a, tp.BENCH_METHODS[a.method].views))
        r = rows[-1]
        print(f"  {r['mean']:.0f} views/s ({r['min']:.0f}–{r['max']:.0f}), {r['epoch_s']:.1f} s for the epoch", flush=True)
    meta = {"machine": machine(), "command": tp.command_line(), "commit": git_commit(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    body = report(rows, fl, a, meta)
    print()
    print(body)
    if a.write:
        write_marked(a.write, "## Pretraining on one GPU (views/s)\n\n" + body, "gpu")


if __name__ == "__main__":
    main()
