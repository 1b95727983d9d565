"""Training-loop throughput: augmented views per second, replearn's SimCLR, MoCo, BYOL and SwAV
against lightly's implementation of each.

For each method both contenders run the whole loop (data, augmentation, forward, backward, optimiser
step, momentum update) on the same Fashion-MNIST images, the same backbone (``convnet``, width 32),
the same heads (512 -> 128) and loss settings, AdamW at 2e-3 and batch 256, with the same number of
torch threads. Each contender runs in its own subprocess, so its peak memory is its own.

    .venv/bin/python bench/throughput.py                       # ~30 steady steps per contender
    .venv/bin/python bench/throughput.py --quick               # smoke check, a few steps
    .venv/bin/python bench/throughput.py --write docs/benchmarks.md
    .venv/bin/python bench/throughput.py --profile simclr/replearn-fp32   # top ops of one steady step

replearn runs the real user path, ``replearn.train.run.pretrain``, with a callback that stamps
``time.perf_counter()`` at every batch start and end. lightly runs the loop of its documentation:
a torch Dataset of PIL images with its transform (``SimCLRTransform``, or ``SwaVTransform`` for
multi-crop), a DataLoader, one forward pass per view and lightly's loss and momentum helpers.
Views per step are views per image x batch (SwAV's small crops count as views). The first ``--warmup`` steps are skipped; the
steady steps are split into ``--repeats`` consecutive windows, and views/s is reported as the mean
over windows with the min-max range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"

# the methods measured; per method: replearn's method arguments and extra options, views per image
BENCH_METHODS = {
    "simclr": ({}, {}, 2),
    "moco": ({"queue_size": 8192, "momentum": 0.99}, {}, 2),
    "byol": ({"base_momentum": 0.99}, {}, 2),
    # 2 large (28 px) + 4 small (12 px) crops; every crop counts as a view
    "swav": ({"n_prototypes": 100, "n_small": 4, "small_size": 12}, {"temperature": 0.1}, 6),
}
SETTINGS = {"replearn-fp32": ("replearn", "32"), "replearn-bf16": ("replearn", "bf16"),
            "lightly-w0": ("lightly", "0"), "lightly-w2": ("lightly", "2")}
# "method/contender" -> (framework, setting, method); the setting is the precision for replearn,
# num_workers for lightly
CONTENDERS = {f"{m}/{c}": (*fs, m) for m in BENCH_METHODS for c, fs in SETTINGS.items()}
BACKBONE, WIDTH, PROJ_HIDDEN, PROJ_DIM, TEMPERATURE, LR, WEIGHT_DECAY = "convnet", 32, 512, 128, 0.2, 2e-3, 1e-4


# --------------------------------------------------------------------------- child: one contender


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


class _Profile:
    """Profiles one whole loop iteration (end of step k -> end of step k+1) and prints its top ops."""

    def __init__(self, at: int, rows: int = 30):
        self.at, self.rows, self.prof = at, rows, None

    def step_end(self, i: int) -> None:
        import torch.profiler as tp

        if i == self.at - 1:
            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
            self.prof.start()
        elif i == self.at and self.prof is not None:
            self.prof.stop()
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.rows)
            print(table, file=sys.stderr, flush=True)
            self.prof = None


def _run_replearn(precision: str, a, method: str) -> dict:
    import lightning.pytorch as pl
    import torch

    from replearn.train.run import pretrain, resolve_precision

    stamps: dict[str, list[float]] = {"start": [], "end": []}
    threads_seen: list[int] = []
    prof = _Profile(a.warmup) if a.profile else None

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not threads_seen:
                threads_seen.append(torch.get_num_threads())
            stamps["start"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            stamps["end"].append(time.perf_counter())
            if prof is not None:
                prof.step_end(batch_idx)

    n_steps = a.warmup + a.steps
    with tempfile.TemporaryDirectory(prefix="replearn-bench-") as tmp:
        margs, extra, _ = BENCH_METHODS[method]
        options = dict(temperature=TEMPERATURE, lr=LR, weight_decay=WEIGHT_DECAY, optimizer="adamw") | extra
        pretrain(
            data="fashion-mnist", method=method, backbone=BACKBONE, width=WIDTH, batch_size=a.batch_size,
            epochs=1, limit=n_steps * a.batch_size, out=str(Path(tmp) / "run"), knn_monitor=False,
            precision=precision, callbacks=[Timer()], proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM,
            method_args=margs, **options,
        )
    return {
        **stamps,
        "threads": threads_seen[0] if threads_seen else torch.get_num_threads(),
        "precision": resolve_precision(precision, "auto"),
        "auto_precision": resolve_precision("auto", "auto"),
    }


class _PILImages:
    """The images as PIL grayscale images, converted per item, as torchvision's FashionMNIST does."""

    def __init__(self, images, transform):
        self.images, self.transform = images.numpy(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, 0])), 0  # 2-d uint8 -> mode "L"


def _lightly_model(method: str, data, steps: int):
    """lightly's parts for ``method`` (its documented example loop), on replearn's backbone:
    returns (model, step(views, i) -> loss)."""
    import copy

    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        MoCoProjectionHead,
        SimCLRProjectionHead,
        SwaVProjectionHead,
        SwaVPrototypes,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    from replearn.nn import build_backbone

    backbone = build_backbone(BACKBONE, in_channels=data.channels, image_size=data.size, width=WIDTH)
    d = backbone.out_dim
    margs, extra, _ = BENCH_METHODS[method]
    if method == "simclr":
        model = nn.ModuleDict({"backbone": backbone, "head": SimCLRProjectionHead(d, PROJ_HIDDEN, PROJ_DIM)})
        crit = NTXentLoss(temperature=TEMPERATURE)

        def step(views, i):
            z0, z1 = (model["head"](model["backbone"](x)) for x in views)
            return crit(z0, z1)
    elif method in ("moco", "byol"):
        if method == "moco":
            head = MoCoProjectionHead(d, PROJ_HIDDEN, PROJ_DIM)  # Linear-ReLU-Linear, as replearn's MoCo v2 head
            model = nn.ModuleDict({"backbone": backbone, "head": head})
            crit = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=(margs["queue_size"], PROJ_DIM))
        else:
            model = nn.ModuleDict({"backbone": backbone, "head": BYOLProjectionHead(d, PROJ_HIDDEN, PROJ_DIM),
                                   "pred": BYOLPredictionHead(PROJ_DIM, PROJ_HIDDEN, PROJ_DIM)})
            crit = NegativeCosineSimilarity()
        target = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": copy.deepcopy(model["head"])})
        deactivate_requires_grad(target)

        def step(views, i):
            m = margs["momentum"] if method == "moco" else cosine_schedule(i, steps, margs["base_momentum"], 1.0)
            update_momentum(model["backbone"], target["backbone"], m)
            update_momentum(model["head"], target["head"], m)
            q = [model["head"](model["backbone"](x)) for x in views]
            if method == "byol":
                q = [model["pred"](z) for z in q]
            with torch.no_grad():
                k = [target["head"](target["backbone"](x)) for x in views]
            return 0.5 * (crit(q[0], k[1]) + crit(q[1], k[0]))  # symmetric, as replearn's
    elif method == "swav":
        model = nn.ModuleDict({"backbone": backbone, "head": SwaVProjectionHead(d, PROJ_HIDDEN, PROJ_DIM),
                               "prototypes": SwaVPrototypes(PROJ_DIM, margs["n_prototypes"])})
        crit = SwaVLoss(temperature=extra["temperature"], sinkhorn_epsilon=0.05, sinkhorn_iterations=3)

        def step(views, i):
            model["prototypes"].normalize()
            feats = [nn.functional.normalize(model["head"](model["backbone"](x)), dim=1) for x in views]
            scores = [model["prototypes"](f, i) for f in feats]
            return crit(scores[:2], scores[2:])
    return model, step


def _lightly_transform(method: str, data):
    """lightly's transform with replearn's "simclr" recipe: crop (0.08, 1), flip 0.5, jitter p 0.8
    (0.4, 0.4, 0.2, 0.1), gray 0.2, blur p 0.5 sigma (0.1, 2), normalised with the data's own
    1-channel mean/std; SwAV: 2 x 28 px crops of (0.35, 1) and 4 x 12 px of (0.08, 0.35)."""
    from lightly.transforms import SimCLRTransform, SwaVTransform

    common = dict(cj_prob=0.8, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2, cj_hue=0.1,
                  random_gray_scale=0.2, gaussian_blur=0.5, sigmas=(0.1, 2.0), hf_prob=0.5, vf_prob=0.0,
                  rr_prob=0.0, normalize={"mean": list(data.mean), "std": list(data.std)})
    if method == "swav":
        _, _, n_views = BENCH_METHODS[method]
        return SwaVTransform(crop_sizes=(data.size, 12), crop_counts=(2, n_views - 2), crop_min_scales=(0.35, 0.08),
                             crop_max_scales=(1.0, 0.35), **common)
    return SimCLRTransform(input_size=data.size, min_scale=0.08, **common)


def _run_lightly(num_workers: str, a, method: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from replearn.data import load_data

    torch.manual_seed(0)
    data = load_data("fashion-mnist", "train")
    n_steps = a.warmup + a.steps
    images = data.images[: n_steps * a.batch_size]
    workers = int(num_workers)
    loader = DataLoader(
        _PILImages(images, _lightly_transform(method, data)), batch_size=a.batch_size, shuffle=True,
        drop_last=True, num_workers=workers, generator=torch.Generator().manual_seed(0),
    )
    model, step = _lightly_model(method, data, n_steps)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
    prof = _Profile(a.warmup) if a.profile else None
    stamps: dict[str, list[float]] = {"start": [], "end": []}
    threads = torch.get_num_threads()
    total_loss = torch.zeros(())
    for i, (views, _) in enumerate(loader):
        stamps["start"].append(time.perf_counter())
        loss = step(views, i)
        total_loss += loss.detach().sum()  # lightly's SwAV loss has shape (1,)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        stamps["end"].append(time.perf_counter())
        if prof is not None:
            prof.step_end(i)
    if not torch.isfinite(total_loss):
        raise RuntimeError("lightly's loss became non-finite")
    del loader  # workers are joined before the children's peak RSS is read
    return {**stamps, "threads": threads, "precision": "32-true"}


def child(name: str, a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    framework, setting, method = CONTENDERS[name]
    t0 = time.perf_counter()
    res = _run_replearn(setting, a, method) if framework == "replearn" else _run_lightly(setting, a, method)
    res.update(
        name=name,
        wall_s=time.perf_counter() - t0,
        maxrss_mib=_maxrss_mib(resource.RUSAGE_SELF),
        children_maxrss_mib=_maxrss_mib(resource.RUSAGE_CHILDREN),
    )
    print("BENCH-RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------- parent: run and report


def summarize(res: dict, a) -> dict:
    """views/s per window of consecutive steady steps, timed end-to-end (end of step i -> end of step j),
    so the time between steps (fetching the next batch, the framework's loop) counts too."""
    end, start = res["end"], res["start"]
    if len(end) < a.warmup + a.steps:
        raise RuntimeError(f"{res['name']}: {len(end)} steps ran, expected {a.warmup + a.steps}")
    views = BENCH_METHODS[CONTENDERS[res["name"]][2]][2] * a.batch_size
    bounds = [a.warmup - 1 + round(k * a.steps / a.repeats) for k in range(a.repeats + 1)]
    rates = [views * (j - i) / (end[j] - end[i]) for i, j in zip(bounds[:-1], bounds[1:], strict=True)]
    lo, hi = bounds[0], bounds[-1]
    steady = end[hi] - end[lo]
    in_step = sum(end[k] - start[k] for k in range(lo + 1, hi + 1))
    return {
        "name": res["name"],
        "mean": sum(rates) / len(rates),
        "min": min(rates),
        "max": max(rates),
        "step_s": steady / (hi - lo),
        "in_step": in_step / steady,
        "rss": res["maxrss_mib"],
        "child_rss": res["children_maxrss_mib"],
        "threads": res["threads"],
        "precision": res["precision"],
        "auto_precision": res.get("auto_precision"),
    }


def run_child(name: str, a) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
    if a.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if a.profile:
        sys.stderr.write(proc.stderr)
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(line[len("BENCH-RESULT "):])


def machine() -> dict:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M).group(1).split()) if "flags" in cpuinfo else set()
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "lightning", "lightly", "replearn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain") else "")


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(Path.cwd()))
    except ValueError:
        exe_s = "python"
    return shlex.join([exe_s, *sys.argv])


def _refs(rows: list[dict]) -> dict[str, dict]:
    """Per method, lightly's fastest setting: the reference its replearn rows are divided by."""
    refs: dict[str, dict] = {}
    for r in rows:
        fw, _, method = CONTENDERS[r["name"]]
        if fw == "lightly" and (method not in refs or r["mean"] > refs[method]["mean"]):
            refs[method] = r
    return refs


def table(rows: list[dict], refs: dict[str, dict]) -> str:
    head = ("| method | contender | setting | views/s (mean) | min–max over windows | s/step | in-step share "
            "| peak RSS MiB | threads | vs lightly |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        fw, setting, method = CONTENDERS[r["name"]]
        setting = f"precision {r['precision']}" if fw == "replearn" else f"num_workers={setting}, fp32"
        rss = f"{r['rss']:.0f}"
        if fw == "lightly" and CONTENDERS[r["name"]][1] != "0":
            rss += f" (largest worker {r['child_rss']:.0f})"
        ref = refs.get(method)
        ratio = f"{r['mean'] / ref['mean']:.2f}x" if ref and fw == "replearn" else ("ref" if r is ref else "")
        lines.append(
            f"| {method} | {r['name'].split('/')[1]} | {setting} | {r['mean']:.0f} | {r['min']:.0f}–{r['max']:.0f} "
            f"| {r['step_s']:.3f} | {100 * r['in_step']:.0f}% | {rss} | {r['threads']} | {ratio} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], a, mach: dict, vers: dict, load: tuple) -> str:
    refs = _refs(rows)
    auto = next((r["auto_precision"] for r in rows if r.get("auto_precision")), None)
    isa = f"AMX {'yes' if mach['amx_bf16'] else 'no'}, avx512_bf16 {'yes' if mach['avx512_bf16'] else 'no'}"
    methods = sorted({CONTENDERS[r["name"]][2] for r in rows}, key=list(BENCH_METHODS).index)
    out = [
        f"- Machine: {mach['cpu']}, {mach['cores']} cores ({isa}); {a.threads} torch threads in every contender"
        + (f"; precision `auto` resolves to {auto} here" if auto else ""),
        f"- Versions: torch {vers['torch']}, torchvision {vers['torchvision']}, lightning {vers['lightning']}, "
        f"lightly {vers['lightly']}, replearn {vers['replearn']}",
        f"- Command: `{command_line()}`",
        f"- Commit: {git_commit()}; date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Load average (1 min) before/after: {load[0]} / {load[1]}",
        f"- Setup: Fashion-MNIST train, batch {a.batch_size}, {BACKBONE} width {WIDTH}, heads {PROJ_HIDDEN}->{PROJ_DIM}, "
        f"AdamW lr {LR}; {a.warmup} warm-up steps skipped, {a.steps} steady steps in {a.repeats} windows; each "
        "contender in its own process; lightly's workers share the same cores as the training loop. Views per "
        "step = views per image x batch: " + ", ".join(f"{m} {BENCH_METHODS[m][2]}" for m in methods)
        + " (SwAV: 2 crops of 28 px + 4 of 12 px). Both sides of a method use the same heads, loss settings and "
        "momentum (MoCo: queue 8192, T 0.2, symmetric; BYOL: cosine momentum from 0.99; SwAV: 100 prototypes, "
        "T 0.1, Sinkhorn 0.05 x 3); lightly runs its documented loop with its own per-image transforms.",
        "",
        table(rows, refs),
        "",
    ]
    for r in rows:
        fw, _, method = CONTENDERS[r["name"]]
        if fw == "replearn" and method in refs:
            ref = refs[method]
            out.append(f"- {method}: replearn/lightly ({r['name']} / {ref['name']}): **{r['mean'] / ref['mean']:.2f}x**")
    if load[0] is not None and load[0] > 0.5 * mach["cores"]:
        out.append(
            f"- Warning: the machine was busy (load {load[0]} on {mach['cores']} cores): with as many torch threads "
            "as cores, every op waits for a descheduled thread, so these figures are noisy and not for the record."
        )
    return "\n".join(out) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace the text between the throughput markers, or append the section; other text stays."""
    section = f"{MARK_START}\n## Training throughput (views/s)\n\n{body}{MARK_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_START in text and MARK_END in text and text.index(MARK_START) < text.index(MARK_END):
        i, j = text.index(MARK_START), text.index(MARK_END) + len(MARK_END)
        text = text[:i] + section + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="steady steps per contender (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="steps skipped at the start")
    p.add_argument("--repeats", type=int, default=3, help="windows the steady steps are split into")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: cores)")
    p.add_argument("--quick", action="store_true", help="smoke check: 2 warm-up + 3 steady steps")
    p.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=None, help="contenders (method/setting)")
    p.add_argument("--methods", nargs="+", choices=list(BENCH_METHODS), default=list(BENCH_METHODS))
    p.add_argument("--write", metavar="MARKDOWN", help="update the throughput section of this file")
    p.add_argument("--profile", nargs="?", const="simclr/replearn-fp32", choices=list(CONTENDERS), default=None,
                   help="print the top ops (self CPU) of one steady loop iteration of one contender")
    p.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a)
        return
    if a.only is None:
        a.only = [c for c in CONTENDERS if CONTENDERS[c][2] in a.methods]
    if a.quick:
        a.steps, a.warmup, a.repeats = 3, 2, 3
    if a.profile:
        a.only, a.steps, a.repeats = [a.profile], 1, 1
    if a.warmup < 1 or a.steps < a.repeats:
        p.error("need --warmup >= 1 and --steps >= --repeats")
    if a.write and (a.quick or a.profile):
        p.error("--quick and --profile figures are not for the record; drop --write")

    mach, vers = machine(), versions()
    print(f"{mach['cpu']}, {mach['cores']} cores, AMX {mach['amx_bf16']}, avx512_bf16 {mach['avx512_bf16']}; "
          f"torch {vers['torch']}, lightly {vers['lightly']}; torch threads per contender: {a.threads}", flush=True)
    load0 = loadavg()
    rows = []
    for name in a.only:
        print(f"running {name} ({a.warmup} warm-up + {a.steps} steps) ...", flush=True)
        res = run_child(name, a)
        if res["threads"] != a.threads:
            print(f"  note: {name} ran with {res['threads']} threads, not {a.threads}", flush=True)
        rows.append(summarize(res, a))
        r = rows[-1]
        print(f"  {r['mean']:.0f} views/s ({r['min']:.0f}–{r['max']:.0f}), {r['step_s']:.3f} s/step, "
              f"peak RSS {r['rss']:.0f} MiB, {res['wall_s']:.0f} s in all", flush=True)
    body = report(rows, a, mach, vers, (load0, loadavg()))
    print()
    print(body)
    if a.write:
        write_section(Path(a.write), body)
        print(f"updated {a.write}")


if __name__ == "__main__":
    main()
