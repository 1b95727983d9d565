"""The semi-supervised table on Fashion-MNIST: 40 and 250 labels (4 and 25 per class), seeds 0, 1, 2.

Rows: the supervised baseline (labelled images only), each method from scratch (``fixmatch-graph``:
FixMatch with CoMatch's graph-contrastive term), and FixMatch and
ReMixMatch started from a self-supervised encoder (``--init``, default ``runs/demo``, the output of
``make demo``). Every run uses ``configs/semisup/NAME.yaml`` (its step budget and settings) and is
then scored by the test accuracy of its EMA classifier (``classifier_accuracy``, the figure
``replearn evaluate`` reports as ``accuracy``). Each cell is mean [min, max] over the seeds.

    python bench/semisup.py --out runs/semisup                       # everything (48 runs)
    python bench/semisup.py --out runs/semisup --only fixmatch+init --labels 4 --seeds 0
    python bench/semisup.py --out /tmp/ss --steps 20 --seeds 0 --labels 4 --parallel 2   # smoke check
    python bench/semisup.py --out runs/semisup --write docs/results.md
    python bench/semisup.py --out runs/semisup-gpu --only fixmatch,remixmatch --minutes 5 --parallel 12 \
        --threads 1                                     # a GPU session: each run sized to 5 minutes
    python bench/semisup.py --out runs/semisup-gpu --write docs/results.md --marker semisup-gpu

``--minutes M`` replaces the configs' step budgets: each row first trains ``CALIBRATION_STEPS`` steps
(as many runs at once as ``--parallel``, so the machine is shared as it will be), and its runs then
get as many steps as that speed fits into M minutes.

A run already trained in ``--out`` is only scored again; rows of earlier calls are kept.
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
from zoo import _run, machine, write_marked  # noqa: E402

CALIBRATION_STEPS = 60
ROWS = ["supervised", "pseudolabel", "meanteacher", "mixmatch", "fixmatch", "fixmatch-graph", "remixmatch",
        "fixmatch+init", "remixmatch+init"]


def job(row: str, per_class: int, seed: int, args, steps: int | None = None, root: Path | None = None) -> dict:
    method, init = row.removesuffix("+init"), row.endswith("+init")
    steps = steps or args.steps
    out = (root or Path(args.out)) / row / f"{per_class}x{seed}"
    rec = {"row": row, "per_class": per_class, "seed": seed, "jobs_at_once": args.parallel}
    cmd = [sys.executable, "-m", "replearn", "semisup", "--config", f"configs/semisup/{method}.yaml",
           "--labels-per-class", str(per_class), "--seed", str(seed), "--out", str(out),
           *(["--init", args.init] if init else []), *(["--steps", str(steps)] if steps else []), *args.extra.split()]
    rec["cmd"] = " ".join(["replearn", *cmd[3:]])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "classifier.pt").exists() or not (out / "meta.json").exists() or "steps" not in json.loads(
        (out / "meta.json").read_text()
    ):
        for stale in ("last.ckpt", "classifier.pt"):
            (out / stale).unlink(missing_ok=True)
        rc, secs = _run(cmd, out.parent / f"{out.name}.log", args.threads)
        rec["rc"], rec["wall"] = rc, round(secs, 1)
        if rc != 0:
            rec["error"] = (out.parent / f"{out.name}.log").read_text()[-600:]
            return rec
    from replearn.data import load_data
    from replearn.evaluate.predict import classifier_accuracy

    rec["accuracy"] = round(classifier_accuracy(str(out), load_data("fashion-mnist", "test")), 2)
    meta = json.loads((out / "meta.json").read_text())
    rec.update(train_seconds=meta.get("train_seconds"), steps=meta.get("steps"), git_commit=meta.get("git_commit"))
    rec["commit"] = (meta.get("git_commit") or "")[:7]
    return rec


def calibrate(rows: list[str], todo: list[tuple], args, root: Path) -> dict[str, int]:
    """Steps per row that fit ``args.minutes``, from CALIBRATION_STEPS-step runs made as many at once as
    the real runs will be (their seconds include start-up, so the estimate errs short)."""
    firsts = [next(t for t in todo if t[0] == r) for r in rows]
    jobs = firsts + [t for t in todo if t not in firsts][: max(args.parallel - len(firsts), 0)]
    with ThreadPoolExecutor(args.parallel) as pool:
        recs = list(pool.map(lambda t: job(*t, args, CALIBRATION_STEPS, root), jobs))
    steps = {}
    for r in rows:
        secs = [x["train_seconds"] / x["steps"] for x in recs if x["row"] == r and x.get("train_seconds")]
        if not secs:
            raise SystemExit(f"calibration of {r} failed: {next((x.get('error') for x in recs if x['row'] == r), '')}")
        steps[r] = max(CALIBRATION_STEPS, int(args.minutes * 60 / max(secs) // 10 * 10))
        print(f"{r}: {max(secs):.3f} s a step -> {steps[r]} steps in {args.minutes:g} min", flush=True)
    return steps


def table(summary: dict) -> str:
    runs = [r for r in summary["runs"] if "accuracy" in r]
    lines = [
        f"Machine: {summary['machine']}; {summary['date']}. Test top-1 (%) of the EMA classifier, mean [min, max] "
        "over seeds (n = the seeds measured); seconds and steps per run (mean). "
        + (f"Each run's steps were sized from a timed {CALIBRATION_STEPS}-step run of its row to a budget of "
           + ", ".join(f"{m:g} min ({r})" for r, m in summary["minutes"].items()) + ". " if summary.get("minutes") else "")
        + ("Rows marked † trained several runs at a time, sharing the machine." if any(
            r.get("jobs_at_once", 1) > 1 for r in runs) else "One run at a time."),
        "",
        "| method | 40 labels | 250 labels | above supervised (40 / 250) | steps | train s (40 / 250) | commit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def mean_of(row: str, per_class: int) -> float | None:
        acc = [r["accuracy"] for r in runs if r["row"] == row and r["per_class"] == per_class]
        return sum(acc) / len(acc) if acc else None

    for row in ROWS:
        cells, secs, steps, commits, above = [], [], set(), set(), []
        for per_class in (4, 25):
            rs = [r for r in runs if r["row"] == row and r["per_class"] == per_class]
            if not rs:
                cells.append("-")
                secs.append("-")
                above.append("-")
                continue
            acc = [r["accuracy"] for r in rs]
            base = mean_of("supervised", per_class)
            above.append("-" if row == "supervised" or base is None else
                         f"{'yes' if sum(acc) / len(acc) > base else 'no'} ({sum(acc) / len(acc) - base:+.1f})")
            cells.append(f"{sum(acc) / len(acc):.1f} [{min(acc):.1f}, {max(acc):.1f}] (n={len(acc)})")
            s = [r["train_seconds"] for r in rs if r.get("train_seconds")]
            shared = any(r.get("jobs_at_once", 1) > 1 for r in rs)
            secs.append(f"{sum(s) / len(s):.0f}{' †' if shared else ''}" if s else "-")
            steps |= {r.get("steps") for r in rs}
            commits |= {r.get("commit") for r in rs}
        if cells == ["-", "-"]:
            continue
        lines.append(f"| {row} | {cells[0]} | {cells[1]} | {' / '.join(above)} "
                     f"| {', '.join(map(str, sorted(s for s in steps if s)))} "
                     f"| {' / '.join(secs)} | {', '.join(sorted(c for c in commits if c))} |")
    lines += ["", "Commands (one per run; `--labels-per-class 4|25 --seed 0|1|2`):", ""]
    seen = set()
    for r in runs:
        if r["row"] not in seen:
            seen.add(r["row"])
            lines.append(f"- {r['row']}: `{r['cmd']}`")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/semisup")
    p.add_argument("--only", default=None, help="comma-separated rows: " + ", ".join(ROWS))
    p.add_argument("--labels", default="4,25", help="labels per class, comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--init", default="runs/demo", help="the pretraining run of the +init rows")
    p.add_argument("--steps", type=int, default=None, help="override the configs' steps (smoke checks)")
    p.add_argument("--extra", default="", help="more 'replearn semisup' options for every run, e.g. '--width 64'")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--minutes", type=float, default=None,
                   help="size every run to this many minutes from a timed calibration run of its row")
    p.add_argument("--write", default=None, help="write the table into this markdown file and stop")
    p.add_argument("--marker", default="semisup", help="the section of --write: <!-- MARKER:start/end -->")
    args = p.parse_args()
    out = Path(args.out)
    if args.write:
        write_marked(args.write, table(json.loads((out / "summary.json").read_text())), args.marker)
        return 0
    rows = [r for r in ROWS if not args.only or r in args.only.split(",")]
    if any(r.endswith("+init") for r in rows) and not (Path(args.init) / "encoder.pt").exists():
        raise SystemExit(f"no encoder in {args.init}: run 'make demo' first, or pass --init RUN")
    todo = [(r, int(k), int(s)) for r in rows for k in args.labels.split(",") for s in args.seeds.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {"runs": []}
    keep = [e for e in earlier["runs"] if (e["row"], e["per_class"], e["seed"]) not in set(todo)]
    t0 = time.perf_counter()
    budget = calibrate(rows, todo, args, out / "_calibration") if args.minutes else {}
    minutes = {**earlier.get("minutes", {}), **{r: args.minutes for r in budget}}
    steps = {**earlier.get("steps", {}), **budget}
    done = []
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(job, *t, args, budget.get(t[0])) for t in todo]
        for f in futures:
            r = f.result()
            done.append(r)
            summary = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d"), "runs": keep + done,
                       **({"minutes": minutes, "steps": steps} if minutes else {})}
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            status = f"{r['accuracy']:.1f}" if "accuracy" in r else "FAILED"
            print(f"[{time.perf_counter() - t0:6.0f}s] {r['row']} {r['per_class']}x{r['seed']}: {status}", flush=True)
    print(table(summary))
    return 0 if all("accuracy" in r for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
