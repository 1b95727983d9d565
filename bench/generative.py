"""The disentanglement table: the generative methods on ``shapes``, MIG and FactorVAE score over seeds.

Every method trains on the built-in ``shapes`` data (32 px; factors shape, scale, rotation, x, y)
with its ``configs/generative/NAME.yaml`` (the same flatconv encoder, decoder, 10-d code, batch and
epochs), once per seed; ``replearn evaluate RUN --data shapes`` then measures MIG and the FactorVAE
score of the encoder's posterior means (InfoGAN: Q's outputs) over the whole factor grid, beside
kNN and linear accuracy of the shape. The table gives mean [min, max] over the seeds, and says
whether betavae and factorvae beat vae on both measures.

    python bench/generative.py --out runs/gen-shapes                 # every method, seeds 0, 1, 2
    python bench/generative.py --out runs/gen-shapes --only vae --seeds 0
    python bench/generative.py --out /tmp/gen --epochs 1 --limit 4096 --seeds 0   # smoke check
    python bench/generative.py --out runs/gen-shapes --write docs/results.md

A run already trained in ``--out`` is only evaluated again; rows of earlier calls are kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import ROOT, _run, machine, train_once, write_marked  # noqa: E402

MARKER = "generative"
METHODS = ("vae", "betavae", "factorvae", "ladder", "infogan")


def job(method: str, seed: int, args) -> dict:
    """Train one (method, seed) on shapes, then evaluate it there."""
    name = f"{method}-s{seed}"
    out = Path(args.out) / name
    row: dict = {"name": name, "method": method, "seed": seed, "jobs_at_once": args.jobs_at_once}
    py = [sys.executable, "-m", "replearn"]
    train = [*py, "pretrain", "--config", f"configs/generative/{method}.yaml", "--out", str(out), "--seed", str(seed),
             "--knn-monitor", "false", *(["--epochs", str(args.epochs)] if args.epochs else []),
             *(["--limit", str(args.limit)] if args.limit else [])]
    row["train_cmd"] = " ".join(["replearn", *train[3:]]).replace(str(ROOT) + "/", "")
    out.mkdir(parents=True, exist_ok=True)
    row.update(train_once(train, out, args.threads, args.retrain))
    if "error" in row:
        return row
    cmd = [*py, "evaluate", str(out), "--data", "shapes", "--few-label", "4", "--seeds", "0"]
    rc, secs = _run(cmd, out / "eval.log", args.threads)
    row["eval_rc"], row["eval_wall"] = rc, round(secs, 1)
    if rc != 0:
        row["error"] = (out / "eval.log").read_text()[-600:]
        return row
    row["eval"] = json.loads((out / "eval.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    row["train_seconds"], row["git_commit"] = meta.get("train_seconds"), meta.get("git_commit")
    return row


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per method: MIG, FactorVAE score, kNN and linear shape accuracy over its seeds."""
    out: dict[str, dict] = {}
    for m in METHODS:
        done = [r for r in rows if r.get("method") == m and "eval" in r and "disentanglement" in r["eval"]]
        if not done:
            continue
        d = [r["eval"]["disentanglement"] for r in done]
        out[m] = {
            "seeds": sorted(r["seed"] for r in done),
            "mig": _stats([x["mig"]["mig"] for x in d]),
            "factorvae": _stats([x["factorvae"]["score"] for x in d]),
            "knn": _stats([r["eval"]["knn"] for r in done]),
            "linear": _stats([r["eval"]["linear"] for r in done]),
            "train_seconds": _stats([r["train_seconds"] or 0 for r in done]),
            "commits": sorted({(r.get("git_commit") or "")[:7] for r in done}),
        }
    return out


def _cell(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{s['mean'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]"


def table(summary: dict) -> str:
    per = summarise(summary["rows"])
    lines = [
        f"Machine: {summary['machine']}; {summary['date']}; {summary['parallel']} run(s) at a time, "
        f"{summary['threads']} thread(s) each. Mean [min, max] over the seeds listed; MIG and the "
        "FactorVAE score of the posterior means (InfoGAN: Q's outputs) over all 46,080 grid images; "
        "kNN and linear: test top-1 of the shape (3 classes) on the 5,000 off-grid test images.",
        "",
        "| method | seeds | MIG | FactorVAE score | shape kNN | shape linear | train s | beats vae on both | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    vae = per.get("vae")
    for m, s in per.items():
        beats = ""
        if vae and m != "vae":
            ok = s["mig"]["mean"] > vae["mig"]["mean"] and s["factorvae"]["mean"] > vae["factorvae"]["mean"]
            beats = "yes" if ok else "**no**"
        lines.append(
            f"| {m} | {','.join(map(str, s['seeds']))} | {_cell(s['mig'])} | {_cell(s['factorvae'])} | "
            f"{_cell(s['knn'], digits=1)} | {_cell(s['linear'], digits=1)} | {s['train_seconds']['mean']:.0f} | {beats} | "
            f"{','.join(s['commits'])} |"
        )
    lines += ["", "Commands (from the repository root; each run's evaluation is `replearn evaluate RUN --data shapes`):", ""]
    seen = set()
    for r in summary["rows"]:
        if r.get("train_cmd") and r["method"] not in seen and r["seed"] == 0:
            seen.add(r["method"])
            lines.append(f"- {r['method']}: `{r['train_cmd']}` (and `--seed 1`, `--seed 2`)")
    return "\n".join(lines)


def save(out: Path, rows: list[dict], args) -> dict:
    rows.sort(key=lambda r: (METHODS.index(r["method"]) if r.get("method") in METHODS else 99, r.get("seed", 0)))
    summary = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d"), "parallel": args.parallel,
               "threads": args.threads, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gen-shapes")
    p.add_argument("--only", default=None, help="comma-separated methods")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (smoke checks)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke checks)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--write", default=None, help="write the table into this markdown file and stop")
    args = p.parse_args()
    out = Path(args.out)
    if args.write:
        write_marked(args.write, table(json.loads((out / "summary.json").read_text())), MARKER)
        return 0
    methods = [m for m in METHODS if not args.only or m in args.only.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(m, s) for s in seeds for m in methods]
    args.jobs_at_once = min(args.parallel, len(jobs))
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "summary.json").read_text())["rows"] if (out / "summary.json").exists() else []
    names = {f"{m}-s{s}" for m, s in jobs}
    rows = [r for r in earlier if r["name"] not in names]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {f"{m}-s{s}": pool.submit(job, m, s, args) for m, s in jobs}
        for n, f in futures.items():
            r = f.result()
            rows.append(r)
            save(out, rows, args)
            d = r.get("eval", {}).get("disentanglement")
            status = f"MIG {d['mig']['mig']:.3f} FactorVAE {d['factorvae']['score']:.3f}" if d else "FAILED"
            print(f"[{time.perf_counter() - t0:6.0f}s] {n}: {status}", flush=True)
    summary = save(out, rows, args)
    print(table(summary))
    return 0 if all("eval" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
