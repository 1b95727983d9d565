"""The metric-learning table: retrieval on Fashion-MNIST classes held out from training.

Every loss trains on classes 0-4 with its ``configs/metric/NAME.yaml`` (the same backbone, views,
batches of 5 classes x 32 images and epochs); ``replearn evaluate`` then measures Recall@1/2/4/8 and
MAP@R on the test images of classes 5-9, which no row saw with a label. Beside them: raw pixels,
and a self-supervised encoder trained with no labels at all (``--ssl``, default ``runs/demo``, the
output of ``make demo``). ``NAME+init`` rows start the loss from that encoder (``--init``).

    python bench/metric.py --out runs/metric                          # every row
    python bench/metric.py --out runs/metric --only supcon,arcface+init
    python bench/metric.py --out /tmp/metric --epochs 1 --limit 3000 --eval-limit 5000   # smoke check
    python bench/metric.py --out runs/metric-s1 --seed 1 --only supcon+init   # another seed, its own --out
    python bench/metric.py --out runs/metric --write docs/results.md --seed-runs runs/metric-s1,runs/metric-s2

A row already trained in ``--out`` is only evaluated again; rows of earlier calls are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import ROOT, _run, machine, train_once, write_marked  # noqa: E402

HELD_OUT = "5-9"
MARKER = "metric"


def losses() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "metric").glob("*.yaml"))


def job(name: str, args) -> dict:
    """Train one row (a loss, 'NAME+init', 'ssl' or 'raw'), then evaluate it."""
    out = Path(args.out) / name
    row: dict = {"name": name, "jobs_at_once": args.jobs_at_once}
    py = [sys.executable, "-m", "replearn"]
    eval_cmd = [*py, "evaluate", str(out), "--few-label", "4", "--seeds", "0"]
    if name == "raw":
        eval_cmd = [*py, "evaluate", "--baseline", "raw", "--out", str(out), "--retrieval-classes", HELD_OUT,
                    "--few-label", "4", "--seeds", "0"]
    elif name == "ssl":
        eval_cmd = [*py, "evaluate", args.ssl, "--out", str(out), "--retrieval-classes", HELD_OUT,
                    "--few-label", "4", "--seeds", "0"]
        row["train_cmd"] = f"(no labels) {args.ssl}: " + _ssl_command(Path(args.ssl))
    else:
        loss, init = name.removesuffix("+init"), name.endswith("+init")
        train = [*py, "metric", "--config", f"configs/metric/{loss}.yaml", "--out", str(out), "--knn-monitor", "false",
                 *(["--init", args.ssl] if init else []), *(["--epochs", str(args.epochs)] if args.epochs else []),
                 *(["--limit", str(args.limit)] if args.limit else []), *(["--seed", str(args.seed)] if args.seed else [])]
        row["train_cmd"] = " ".join(["replearn", *train[3:]])
        out.mkdir(parents=True, exist_ok=True)
        row.update(train_once(train, out, args.threads, args.retrain))
        if "error" in row:
            return row
        meta = json.loads((out / "meta.json").read_text())
        row.update(train_seconds=meta.get("train_seconds"), git_commit=meta.get("git_commit"))
        row["commit"] = (meta.get("git_commit") or "")[:7]
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_limit:
        eval_cmd += ["--limit", str(args.eval_limit)]
    row["eval_cmd"] = " ".join(["replearn", *eval_cmd[3:]])
    rc, secs = _run(eval_cmd, out / "eval.log", args.threads)
    row["eval_rc"], row["eval_wall"] = rc, round(secs, 1)
    if rc != 0:
        row["error"] = (out / "eval.log").read_text()[-600:]
        return row
    row["eval"] = json.loads((out / "eval.json").read_text())
    return row


def _ssl_command(run: Path) -> str:
    cfg = run / "config.yaml"
    if not cfg.exists():
        return "its config.yaml is missing"
    import yaml

    c = yaml.safe_load(cfg.read_text())
    return f"replearn pretrain --method {c['method']} --epochs {c['epochs']} --batch-size {c['batch_size']} (config.yaml)"


def table(summary: dict, others: list[dict] = ()) -> str:
    """The markdown table of ``summary``'s rows; ``others`` (summaries of other seeds' --out) turn a
    row's R@1 and MAP@R cells into mean [min, max] over every seed that has that row."""
    ssl = next((r for r in summary["rows"] if r["name"] == "ssl" and "eval" in r), None)
    bar = ssl["eval"]["retrieval"]["recall@1"] if ssl else None
    seeds = {}
    for s in (summary, *others):
        for r in s["rows"]:
            if "eval" in r:
                seeds.setdefault(r["name"], []).append(r["eval"]["retrieval"])

    def cell(name: str, key: str) -> str:
        v = [e[key] for e in seeds[name]]
        if len(v) == 1:
            return f"{v[0]:.1f}"
        return f"{sum(v) / len(v):.1f} [{min(v):.1f}, {max(v):.1f}] (n={len(v)})"

    lines = [
        f"Machine: {summary['machine']}; {summary['date']}; {summary['jobs_at_once']} job(s) at a time, "
        f"{summary['threads']} thread(s) each. Retrieval on the {summary['queries']} test images of the held-out "
        "classes 5-9 (each image a query against the others, cosine similarity of the encoder's features); "
        "kNN is the protocol's 10-class kNN accuracy, for scale. Cells with n = 3 are mean [min, max] over "
        "training seeds 0, 1, 2 (`--seed`); the other cells are seed 0.",
        "",
        "| row | R@1 | R@2 | R@4 | R@8 | MAP@R | kNN (all classes) | R@1 above the self-supervised encoder | train s | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        if "eval" not in r:
            lines.append(f"| {r['name']} | failed: see {r['name']}/*.log | | | | | | | | |")
            continue
        name, e, t = r["name"], r["eval"]["retrieval"], r["eval"]
        r1 = [x["recall@1"] for x in seeds[name]]
        mean = sum(r1) / len(r1)
        above = ""
        if name not in ("raw", "ssl") and bar is not None:
            what = "every seed" if len(r1) > 1 and min(r1) > bar else "mean" if len(r1) > 1 else ""
            above = (f"yes (+{mean - bar:.1f}{', ' + what if what else ''})" if mean > bar
                     else f"**no** ({mean - bar:+.1f})")
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
        lines.append(f"| {name} | {cell(name, 'recall@1')} | {e['recall@2']:.1f} | {e['recall@4']:.1f} | "
                     f"{e['recall@8']:.1f} | {cell(name, 'map@r')} | {t['knn']:.1f} | {above} | {secs} | "
                     f"{r.get('commit', '')} |")
    lines += ["", "Commands (from the repository root; other seeds add `--seed 1|2` and their own --out):", ""]
    for r in summary["rows"]:
        lines.append(f"- {r['name']}: " + (f"`{r['train_cmd']}`, then " if r.get("train_cmd") else "")
                     + f"`{r.get('eval_cmd', '')}`")
    return "\n".join(lines).replace(str(ROOT) + "/", "")


def save(out: Path, rows: list[dict], args) -> dict:
    order = {n: i for i, n in enumerate(["raw", "ssl", *losses(), *[f"{x}+init" for x in losses()]])}
    rows.sort(key=lambda r: order.get(r["name"], 99))
    queries = next((r["eval"]["retrieval"]["queries"] for r in rows if "eval" in r), None)
    summary = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d"),
               "jobs_at_once": args.jobs_at_once, "threads": args.threads, "queries": queries, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/metric")
    p.add_argument("--only", default=None, help="comma-separated rows: raw, ssl, a loss config's name, NAME+init")
    p.add_argument("--ssl", default="runs/demo", help="the self-supervised run (the ssl row, and --init of +init rows)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (smoke checks)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke checks)")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--seed", type=int, default=None, help="train with this seed (the configs' is 0); use its own --out")
    p.add_argument("--seed-runs", default=None,
                   help="with --write: comma-separated --out folders of other seeds, for mean [min, max] cells")
    p.add_argument("--write", default=None, help="write the table into this markdown file and stop")
    args = p.parse_args()
    out = Path(args.out)
    if args.write:
        others = [json.loads((Path(o) / "summary.json").read_text()) for o in (args.seed_runs or "").split(",") if o]
        write_marked(args.write, table(json.loads((out / "summary.json").read_text()), others), MARKER)
        return 0
    names = args.only.split(",") if args.only else ["raw", "ssl", *losses()]
    args.jobs_at_once = min(args.parallel, len(names))
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {"rows": []}
    rows = [r for r in earlier["rows"] if r["name"] not in names]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {n: pool.submit(job, n, args) for n in names}
        for n, f in futures.items():
            r = f.result()
            rows.append(r)
            save(out, rows, args)
            status = f"R@1 {r['eval']['retrieval']['recall@1']:.1f}" if "eval" in r else "FAILED"
            print(f"[{time.perf_counter() - t0:6.0f}s] {n}: {status}", flush=True)
    print(table(save(out, rows, args)))
    return 0 if all("eval" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
