"""Where a SimCLR training step's time goes on this machine: the batched views against the
model's forward, backward and optimiser step, in fp32 and bf16 autocast, with and without ``torch.compile`` on the backbone (``--compile``).

The parts are those ``PretrainModule.training_step`` runs, called directly (no Lightning), on
Fashion-MNIST batches of 256 with the demo's settings (convnet width 32, views ``simclr-small``,
AdamW), channels_last as training uses it. Each part is timed over ``--steps`` steps after
``--warmup``; the table gives the median milliseconds per step and the views' share of the step.

    .venv/bin/python bench/stepparts.py               # ~1 minute on 2 cores
    .venv/bin/python bench/stepparts.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import git_commit, machine, write_marked  # noqa: E402

SETTINGS = ("fp32", "bf16", "fp32+compile", "bf16+compile")  # precision, and torch.compile on the backbone


def measure(setting: str, args) -> dict:
    import torch

    import replearn  # noqa: F401  (the allocator settings, as every replearn process has them)
    from replearn.data import load_data
    from replearn.methods import METHODS, MethodOptions
    from replearn.nn import build_backbone
    from replearn.train.module import param_groups, step_generator
    from replearn.views import recipe

    torch.manual_seed(0)
    data = load_data("fashion-mnist", "train")
    rec = recipe("simclr-small")
    method = METHODS.get("simclr")(build_backbone("convnet", 1, 28, 32),
                                   MethodOptions(temperature=0.2, channels=1, image_size=28, width=32))
    method.to(memory_format=torch.channels_last).train()
    precision = setting.split("+")[0]
    if setting.endswith("+compile"):
        from replearn.train.module import compile_backbone

        compile_backbone(method.backbone, torch.device("cpu"))
    first = None
    opt = torch.optim.AdamW(param_groups(method, 1e-4), lr=2e-3)
    times = {"views": [], "forward": [], "backward": [], "optimiser": []}
    for step in range(args.warmup + args.steps):
        index = torch.randint(0, len(data), (args.batch_size,))
        images = data.batch(index)
        t0 = time.perf_counter()
        views = method.make_views(images, rec, 28, data.mean, data.std, step_generator(0, step, 0, images.device))
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = method.training_step(views, index)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        method.after_step()
        t4 = time.perf_counter()
        if step == 0:
            first = t4 - t0  # includes compiling, where there is any
        if step >= args.warmup:
            for k, a, b in (("views", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("optimiser", t3, t4)):
                times[k].append(b - a)
    return {**{k: statistics.median(v) * 1000 for k, v in times.items()}, "first": first}


def table(results: dict, args, started: str) -> str:
    lines = ["| setting | views ms | forward ms | backward ms | optimiser ms | step ms | views' share | first step s |",
             "|---|---|---|---|---|---|---|---|"]
    for setting, r in results.items():
        step = r["views"] + r["forward"] + r["backward"] + r["optimiser"]
        lines.append(f"| {setting} | {r['views']:.1f} | {r['forward']:.1f} | {r['backward']:.1f} | "
                     f"{r['optimiser']:.1f} | {step:.1f} | {100 * r['views'] / step:.1f}% | {r['first']:.1f} |")
    return "\n".join([
        "## Where a SimCLR step's time goes",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python bench/stepparts.py --steps {args.steps} --batch-size {args.batch_size}`",
        f"- Commit: {git_commit()}; started {started}",
        "- The parts of `PretrainModule.training_step` called directly on Fashion-MNIST batches (convnet width 32, "
        "views `simclr-small`: SimCLR's recipe with crops from 20% of the area and no blur; AdamW); medians over "
        f"{args.steps} steps after {args.warmup}",
        "",
        *lines,
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--write", help="markdown file whose stepparts section to replace")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = {p: measure(p, args) for p in SETTINGS}
    text = table(results, args, started)
    print(text)
    if args.write:
        write_marked(args.write, text, "stepparts")


if __name__ == "__main__":
    main()
