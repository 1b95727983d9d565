"""The method zoo on the Fashion-MNIST protocol: train every method at the demo's budget, evaluate
each encoder, and write one table (replearn's rows beside lightly's for the methods it has).

Every method trains from its own config (``configs/demo.yaml`` for SimCLR, ``configs/zoo/NAME.yaml``
for the others): the same backbone (convnet, width 32), epochs (10) and batch (256); the
method's own optimiser settings. lightly's SimCLR, BYOL and SimSiam (``bench/peers/lightly_train.py``)
train with the same backbone, data, views, epochs, batch, optimiser and schedule as replearn's
config of that method, so only the method's implementation differs. Then every encoder goes
through ``replearn evaluate`` (kNN, linear probe, 40/250-label probes over seeds 0, 1, 2).

    python bench/zoo.py --out runs/zoo                      # everything (a GPU: ~10 minutes)
    python bench/zoo.py --out runs/zoo --only moco,byol     # some rows
    python bench/zoo.py --out /tmp/zoo --limit 2048 --epochs 1 --eval-limit 2000   # smoke check
    python bench/zoo.py --out runs/zoo --write docs/results.md   # (re)write the table from runs/zoo

Jobs run ``--parallel`` at a time (training shares the device; evaluation runs on the CPU cores),
so the seconds and views/s of one row are those of a run sharing the machine with others: the
table says how many. ``bench/throughput.py`` measures speed alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- zoo:start -->", "<!-- zoo:end -->"
LIGHTLY = ("simclr", "byol", "simsiam")  # lightly's implementations measured beside ours


def config_of(method: str) -> Path:
    return ROOT / "configs" / ("demo.yaml" if method == "simclr" else f"zoo/{method}.yaml")


def all_methods() -> list[str]:
    return ["simclr", *sorted(p.stem for p in (ROOT / "configs" / "zoo").glob("*.yaml"))]


def _run(cmd: list[str], log: Path, threads: int) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return rc, time.perf_counter() - t0


def train_once(cmd: list[str], out: Path, threads: int, retrain: bool) -> dict:
    """Run the training command ``cmd`` unless ``out`` already holds an encoder (or ``retrain``);
    returns what it measured (train_rc, train_wall; error: the log's tail, when it failed)."""
    if (out / "encoder.pt").exists() and not retrain:
        return {}
    for stale in ("last.ckpt", "encoder.pt", "eval.json"):
        (out / stale).unlink(missing_ok=True)
    rc, secs = _run(cmd, out / "train.log", threads)
    fields = {"train_rc": rc, "train_wall": round(secs, 1)}
    if rc != 0:
        fields["error"] = (out / "train.log").read_text()[-600:]
    return fields


def job(name: str, args) -> dict:
    """Train one row (replearn method, 'lightly-<method>' or 'raw'), then evaluate it."""
    out = Path(args.out) / name
    row: dict = {"name": name}
    smoke = [*(["--limit", str(args.limit)] if args.limit else []), *(["--epochs", str(args.epochs)] if args.epochs else [])]
    py = sys.executable
    if name == "raw":
        cmd = [py, "-m", "replearn", "evaluate", "--baseline", "raw", "--out", str(out)]
        row["train_cmd"] = None
    elif name.startswith("lightly-"):
        method = name.removeprefix("lightly-")
        train = [py, "bench/peers/lightly_train.py", "--method", method, "--config",
                 str(config_of(method).relative_to(ROOT)), "--out", str(out), *smoke]
        cmd = [py, "-m", "replearn", "evaluate", str(out)]
    else:
        train = [py, "-m", "replearn", "pretrain", "--config", str(config_of(name).relative_to(ROOT)),
                 "--out", str(out), "--knn-monitor", "false", *smoke]
        cmd = [py, "-m", "replearn", "evaluate", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    row["jobs_at_once"], row["train_threads"] = args.jobs_at_once, args.train_threads
    if name != "raw":
        row["train_cmd"] = " ".join(["replearn", *train[3:]] if train[1] == "-m" else ["python", *train[1:]])
        row.update(train_once(train, out, args.train_threads, args.retrain))
        if "error" in row:
            return row
    if args.train_only:
        return row
    if args.eval_limit:
        cmd += ["--limit", str(args.eval_limit)]
    row["eval_cmd"] = " ".join(["replearn", *cmd[3:]])
    rc, secs = _run(cmd, out / "eval.log", 1)
    row["eval_rc"], row["eval_wall"] = rc, round(secs, 1)
    if rc != 0:
        row["error"] = (out / "eval.log").read_text()[-600:]
        return row
    row["eval"] = json.loads((out / "eval.json").read_text())
    for meta_name in ("meta.json", "timing.json"):
        if (out / meta_name).exists():
            meta = json.loads((out / meta_name).read_text())
            row["train_seconds"] = meta.get("train_seconds")
            row["views_per_second"] = meta.get("views_per_second")
            row["git_commit"] = meta.get("git_commit")
    return row


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {os.cpu_count()} CPU cores ({cpu_name()}); torch {torch.__version__}"


def git_commit() -> str:
    """The short commit of the working tree, "+dirty" when it holds uncommitted changes."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain") else "")


def _few(r: dict, k: str) -> str:
    f = r["eval"]["few_label"].get(k)
    return f"{f['mean']:.1f} [{f['min']:.1f}, {f['max']:.1f}]" if f else "-"


def table(summary: dict) -> str:
    raw = next((r for r in summary["rows"] if r["name"] == "raw" and "eval" in r), None)
    bar = raw["eval"]["linear"] + 2 if raw else None
    shared = {(r.get("jobs_at_once", summary["parallel"]), r.get("train_threads")) for r in summary["rows"]}
    shared = sorted(s for s in shared if s[0] > 1)
    lines = [
        f"Machine: {summary['machine']}; {summary['date']}; each row's commit is in its last column. "
        "Views count every crop, small ones too. "
        + ("Seconds marked †n: the row trained n jobs at a time ("
           + ", ".join(f"{n}: {t} thread(s) each" for n, t in shared)
           + "), so its seconds and views/s are those of a run sharing the machine; unmarked rows ran one at a time."
           if shared else "One job at a time."),
        "",
        "| method | kNN | linear | 40 labels | 250 labels | train s | views/s | linear ≥ raw + 2 | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        if "eval" not in r:
            lines.append(f"| {r['name']} | failed: see {r['name']}/train.log | | | | | | | |")
            continue
        e = r["eval"]
        ok = "" if r["name"] == "raw" or bar is None else ("yes" if e["linear"] >= bar else "**no**")
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
        if r.get("jobs_at_once", summary["parallel"]) > 1 and r.get("train_seconds"):
            secs += f" †{r.get('jobs_at_once', summary['parallel'])}"
        vps = f"{r['views_per_second']:,.0f}" if r.get("views_per_second") else "-"
        lines.append(
            f"| {r['name']} | {e['knn']:.1f} | {e['linear']:.1f} | {_few(r, '40')} | {_few(r, '250')} | {secs} | {vps} "
            f"| {ok} | {r.get('commit', '')} |"
        )
    lines += ["", "Commands (from the repository root; each row's evaluation is `replearn evaluate` of its --out):", ""]
    for r in summary["rows"]:
        if r.get("train_cmd"):
            lines.append(f"- {r['name']}: `{r['train_cmd'].replace(str(ROOT) + '/', '')}`")
    return "\n".join(lines)


def write_section(doc: Path, text: str, start: str = MARK_START, end: str = MARK_END) -> None:
    """Replace the block between the ``start`` and ``end`` markers of ``doc`` (append it if absent)."""
    body = doc.read_text() if doc.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in body:
        a, b = body.index(start), body.index(end) + len(end)
        body = body[:a] + block + body[b:]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)


def write_marked(doc: str, text: str, marker: str) -> None:
    """Write ``text`` between ``<!-- MARKER:start -->`` and ``<!-- MARKER:end -->`` of ``doc`` and say so."""
    write_section(Path(doc), text, f"<!-- {marker}:start -->", f"<!-- {marker}:end -->")
    print(f"wrote {doc}")


def save(out: Path, rows: list[dict], args, t0: float) -> dict:
    order = {n: i for i, n in enumerate(["raw", *all_methods(), *[f"lightly-{m}" for m in LIGHTLY]])}
    rows.sort(key=lambda r: order.get(r["name"], 99))
    commit = args.commit or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    for r in rows:
        r.setdefault("commit", (r.get("git_commit") or commit)[:7])  # each row keeps the commit that trained it
    summary = {
        "machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d"), "parallel": args.parallel,
        "wall_seconds": round(time.perf_counter() - t0), "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/zoo")
    p.add_argument("--only", default=None, help="comma-separated rows (method names, lightly-NAME, raw)")
    p.add_argument("--no-lightly", action="store_true")
    p.add_argument("--parallel", type=int, default=6)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke checks)")
    p.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (smoke checks)")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--train-only", action="store_true", help="train (e.g. on a GPU host); evaluate in a later call")
    p.add_argument("--retrain", action="store_true", help="train again where an encoder exists")
    p.add_argument("--commit", default=None, help="the commit to name (default: git's HEAD)")
    p.add_argument("--write", default=None, help="write the table into this markdown file and stop")
    args = p.parse_args()
    args.jobs_at_once = args.parallel
    out = Path(args.out)
    if args.write:
        summary = json.loads((out / "summary.json").read_text())
        write_section(Path(args.write), table(summary))
        print(f"wrote {args.write}")
        return 0
    names = ["raw", *all_methods(), *([] if args.no_lightly else [f"lightly-{m}" for m in LIGHTLY])]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    # the longest first: multi-crop and clustering methods, then the rest
    slow = ("swav", "dino", "deepcluster", "pcl", "jigsaw", "pirl", "cpc")
    names.sort(key=lambda n: (n not in slow, n == "raw"))
    args.jobs_at_once = min(args.parallel, len(names))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # rows of earlier calls into the same --out are kept (a later call replaces a row of its name)
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {"rows": []}
    for r in earlier["rows"]:  # rows of earlier calls keep the sharing of the call that made them
        r.setdefault("jobs_at_once", earlier.get("parallel", 1))
    rows = [r for r in earlier["rows"] if r["name"] not in names]
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {n: pool.submit(job, n, args) for n in names}
        for n, f in futures.items():
            r = f.result()
            rows.append(r)
            save(out, rows, args, t0)  # sorts rows
            status = (f"linear {r['eval']['linear']:.1f} knn {r['eval']['knn']:.1f}" if "eval" in r
                      else "trained" if args.train_only and "error" not in r else "FAILED")
            print(f"[{time.perf_counter() - t0:6.0f}s] {n}: {status}", flush=True)
    summary = save(out, rows, args, t0)
    print(table(summary))
    return 0 if all("eval" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
