"""Scaling: SimCLR pretraining in 1 and 2 DDP processes on the CPU (gloo), and what gathering the
negatives from every process costs as the number of processes grows.

Part 1 runs ``replearn pretrain`` (SimCLR, convnet width 32, Fashion-MNIST, precision auto) as a
user would, with ``--accelerator cpu --devices 1`` and ``--devices 2`` (Lightning's DDP, gloo;
Lightning gives each of the 2 processes one of the 2 cores), and reads each run's views/s from
its meta.json:

- 1 process, batch 256;
- 2 processes, batch 128 each (the same global batch of 256, so the same optimisation);
- 2 processes, batch 256 each (global 512).

Part 2 times replearn's NT-Xent (``losses.nt_xent``, forward + backward) for one process's 256
images (512 anchors, 128-d) against the candidates W processes would gather, W = 1, 8, 64, 512:
``dist.gather`` is replaced by a concatenation with W - 1 other processes' embeddings, so the
arithmetic is exactly a process's share of a W-process step. It also times one forward + backward
of the backbone and heads on the same 512 views, so the loss's share of a step is a measured
ratio. Part 3 (in docs/scaling.md) turns the gathered bytes into network time on paper.

    .venv/bin/python bench/scaling.py                     # ~6 minutes on 2 cores
    .venv/bin/python bench/scaling.py --write docs/scaling.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import git_commit, machine, write_marked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DDP_RUNS = [  # (label, processes, batch per process)
    ("1 process, batch 256", 1, 256),
    ("2 processes x batch 128 (global 256)", 2, 128),
    ("2 processes x batch 256 (global 512)", 2, 256),
]
WORLDS = (1, 8, 64, 512)
ANCHORS, DIM = 512, 128  # one process's 256 images x 2 views, SimCLR's 128-d projection


def ddp_run(procs: int, batch: int, steps: int, tmp: Path) -> dict:
    out = tmp / f"ddp-{procs}-{batch}"
    cmd = [sys.executable, "-m", "replearn", "pretrain", "--data", "fashion-mnist", "--method", "simclr",
           "--backbone", "convnet", "--views", "simclr-small", "--epochs", "1", "--batch-size", str(batch),
           "--limit", str(steps * batch * procs), "--accelerator", "cpu", "--devices", str(procs),
           "--knn-monitor", "false", "--out", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    meta = json.loads((out / "meta.json").read_text())
    return {"views_per_second": meta["views_per_second"], "views": meta["views"], "wall": wall}


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def loss_times(repeats: int) -> dict:
    """Seconds of NT-Xent forward + backward for one process's anchors against W processes'
    candidates, and of the backbone + heads forward + backward on the same 512 views."""
    import torch

    from replearn import dist
    from replearn.losses import contrastive

    torch.manual_seed(0)
    z = torch.randn(ANCHORS, DIM, requires_grad=True)
    index = torch.arange(ANCHORS // 2).repeat(2)
    times = {}
    real_gather, real_rank = dist.gather, dist.rank
    try:
        for world in WORLDS:
            others = torch.nn.functional.normalize(torch.randn((world - 1) * ANCHORS, DIM), dim=1)
            other_idx = torch.arange(ANCHORS // 2, ANCHORS // 2 * world).repeat_interleave(2)

            def fake_gather(x, others=others, other_idx=other_idx):  # this process is rank 0 of `world`
                return torch.cat([x, others if x.dtype.is_floating_point else other_idx.to(x.dtype)])

            dist.gather, dist.rank = fake_gather, lambda: 0

            def step():
                z.grad = None
                contrastive.nt_xent(z, index, 0.2).backward()

            times[world] = _time(step, repeats)
    finally:
        dist.gather, dist.rank = real_gather, real_rank

    from replearn.methods import METHODS, MethodOptions
    from replearn.nn import build_backbone

    net = METHODS.get("simclr")(build_backbone("convnet", 1, 28, 32), MethodOptions(temperature=0.2, channels=1, image_size=28, width=32))
    net = net.to(memory_format=torch.channels_last)
    views = [torch.randn(ANCHORS // 2, 1, 28, 28).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    idx = torch.arange(ANCHORS // 2)

    def model_step():
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = net.training_step(views, idx)
        loss.backward()

    times["model"] = _time(model_step, repeats)
    return times


def report(ddp: list[dict], losses: dict, args, started: str) -> str:
    base = ddp[0]["views_per_second"]
    rows = [f"| {r['label']} | {r['views_per_second']:.0f} | {r['views_per_second'] / base:.2f}x | {r['wall']:.0f} |" for r in ddp]
    model = losses["model"]
    lrows = []
    for world in WORLDS:
        cand = ANCHORS * world
        lrows.append(f"| {world} | {cand:,} | {losses[world] * 1000:.1f} | {losses[world] / model:.2f} |")
    return "\n".join([
        "## Measured: DDP on 2 CPU cores, and the loss's share of a step",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python bench/scaling.py --steps {args.steps}`",
        f"- Commit: {git_commit()}; started {started}",
        "",
        "`replearn pretrain --method simclr --backbone convnet --views simclr-small --accelerator cpu "
        f"--devices N`, {args.steps} steps per process, views/s from each run's meta.json:",
        "",
        "| run | views/s | vs 1 process | wall s (incl. start) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"NT-Xent forward + backward for one process's {ANCHORS} anchors ({DIM}-d, fp32) against the "
        f"candidates of W processes, best of {args.repeats}; the backbone + heads forward + backward "
        f"on the same {ANCHORS} views (convnet, bf16 autocast) took **{model * 1000:.0f} ms**:",
        "",
        "| W processes | candidates | loss ms | loss / model step |",
        "|---|---|---|---|",
        *lrows,
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per process in each DDP run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", help="markdown file whose scaling section to replace")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ddp = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, procs, batch in DDP_RUNS:
            r = {"label": label, **ddp_run(procs, batch, args.steps, Path(tmp))}
            print(f"{label}: {r['views_per_second']:.0f} views/s", flush=True)
            ddp.append(r)
    losses = loss_times(args.repeats)
    for world in WORLDS:
        print(f"W={world}: NT-Xent fwd+bwd {losses[world] * 1000:.1f} ms", flush=True)
    text = report(ddp, losses, args, started)
    print(text)
    if args.write:
        write_marked(args.write, text, "scaling")


if __name__ == "__main__":
    main()
