"""Evaluation time of one encoder: the protocol (kNN + linear probe + few-label probes) on the
scikit-learn path against replearn's, with the figures each produces.

Each contender is one ``replearn evaluate`` process on the same run and data; the contenders take
turns (the order reverses every repeat, so a machine that speeds up or slows down over the run
favours none), and the table gives the median of the repeats.

    .venv/bin/python bench/evaluation.py                       # runs/demo on Fashion-MNIST, 2 repeats
    .venv/bin/python bench/evaluation.py --write docs/benchmarks.md

Contenders (``--precision`` of the encoder pass, ``--probe`` solver of the linear probes):
- ``before``: ``--precision 32 --probe sklearn`` with ``REPLEARN_MALLOC=default``: evaluation as
  it ran before this work (the encoder as trained, scikit-learn's L-BFGS, glibc's malloc untuned);
- ``sklearn-path``: the same with replearn's malloc settings (``replearn/allocator.py``), the
  scikit-learn path as it runs today, against which the speed-up is stated;
- ``fast-features``: ``--precision auto --probe sklearn``, only the encoder pass changed;
- ``replearn``: ``--precision auto --probe torch``, the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import git_commit, machine, write_marked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = {
    "before": ("32", "sklearn"),  # and REPLEARN_MALLOC=default: glibc's malloc as it comes
    "sklearn-path": ("32", "sklearn"),
    "fast-features": ("auto", "sklearn"),
    "replearn": ("auto", "torch"),
}


def run_one(name: str, args, out: Path) -> dict:
    precision, probe = CONTENDERS[name]
    cmd = [sys.executable, "-m", "replearn", "evaluate", args.run, "--data", args.data, "--out", str(out),
           "--precision", precision, "--probe", probe]
    env = {**os.environ, **({"REPLEARN_MALLOC": "default"} if name == "before" else {})}
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    r = json.loads((out / "eval.json").read_text())
    return {"name": name, "wall": wall, "total": r["seconds"]["total"], "features": r["seconds"]["features"],
            "knn": r["knn"], "linear": r["linear"], "C": r["linear_C"], "few": r["few_label"]}


def measure(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = list(CONTENDERS) if rep % 2 == 0 else list(reversed(CONTENDERS))
            for name in order:
                r = run_one(name, args, Path(tmp) / f"{name}-{rep}")
                r["repeat"] = rep
                print(f"repeat {rep} {name}: {r['total']:.1f} s (wall {r['wall']:.1f}), kNN {r['knn']}, "
                      f"linear {r['linear']} (C {r['C']})", flush=True)
                rows.append(r)
    return rows


def table(rows: list[dict], args, started: str) -> str:
    few_keys = sorted(rows[0]["few"], key=int)
    head = ["contender", "encoder pass", "probe", "total s (median)", "runs", "features s", "kNN", "linear (C)",
            *[f"{k} labels" for k in few_keys], "vs sklearn-path"]
    base = statistics.median(r["total"] for r in rows if r["name"] == "sklearn-path")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = []
    for name, (precision, probe) in CONTENDERS.items():
        mine = [r for r in rows if r["name"] == name]
        total = statistics.median(r["total"] for r in mine)
        last = mine[-1]  # the figures do not change between repeats (checked below)
        few = [f"{last['few'][k]['mean']:.2f} [{last['few'][k]['min']:.2f}, {last['few'][k]['max']:.2f}]" for k in few_keys]
        runs = ", ".join(f"{r['total']:.1f}" for r in mine)
        lines.append(
            f"| {name} | {precision} | {probe} | {total:.1f} | {runs} "
            f"| {statistics.median(r['features'] for r in mine):.1f} | {last['knn']:.2f} | {last['linear']:.2f} ({last['C']}) | "
            + " | ".join(few) + f" | {base / total:.2f}x |")
        if name != "sklearn-path":
            summary.append(f"- {name}: **{base / total:.2f}x** the sklearn path's speed (median {total:.1f} s "
                           f"against {base:.1f} s)")
    ref = next(r for r in rows if r["name"] == "sklearn-path")
    new = next(r for r in rows if r["name"] == "replearn")
    diffs = [abs(new["knn"] - ref["knn"]), abs(new["linear"] - ref["linear"])]
    diffs += [abs(new["few"][k][s] - ref["few"][k][s]) for k in few_keys for s in ("mean", "min", "max")]
    before = statistics.median(r["total"] for r in rows if r["name"] == "before")
    summary.append(f"- replearn against before: **{before / statistics.median(r['total'] for r in rows if r['name'] == 'replearn'):.2f}x**")
    summary.append(f"- largest change of a figure, replearn against the sklearn path: **{max(diffs):.2f} points**")
    steady = all(len({json.dumps([r["knn"], r["linear"], r["few"]]) for r in rows if r["name"] == n}) == 1 for n in CONTENDERS)
    summary.append(f"- figures identical across repeats: {'yes' if steady else 'no'}")
    return "\n".join([
        "## Evaluation time of the demo encoder",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python bench/evaluation.py --run {args.run} --data {args.data} --repeats {args.repeats}`",
        f"- Commit: {git_commit()}; started {started}",
        "- Each contender is one `replearn evaluate` process (seconds from its eval.json: data, encoder pass, "
        "kNN with k 200, the linear probe with C chosen on a 10% train hold-out, few-label probes over seeds 0-2); "
        "contenders take turns, the order reversed every repeat",
        "",
        *lines,
        "",
        *summary,
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", help="markdown file whose evaluation section to replace")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = table(measure(args), args, started)
    print(text)
    if args.write:
        write_marked(args.write, text, "evaluation")


if __name__ == "__main__":
    main()
