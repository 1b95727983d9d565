"""NT-Xent's time and memory as the number of processes W grows: replearn's loss (blocks of
anchors, ``losses.contrastive.nt_xent``) against the same formula through plain autograd, for one
process's 512 anchors (128-d, float32) against the candidates of W processes.

    .venv/bin/python bench/ntxent.py                          # W = 1, 8, 64, 256, 512
    .venv/bin/python bench/ntxent.py --write docs/scaling.md  # the "ntxent" section

Each (contender, W) runs in its own process, which stands in for rank 0 of W: ``dist.gather``
returns its own embeddings followed by fixed random ones for the other W - 1 processes. Time is
forward + backward, the best of ``--repeats`` after a warm-up; memory is the process's peak RSS
after the steps less its peak before the first one (the loss's temporaries). The two losses and
their gradients are compared in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import git_commit, machine, write_marked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANCHORS, DIM, TEMPERATURE = 512, 128, 0.2
WORLDS = (1, 8, 64, 256, 512)


def plain_nt_xent(z, indexes, temperature, cand, cand_idx, offset):
    """The formula of ``nt_xent``'s docstring written as autograd builds it: the whole
    (anchors x candidates) logits, masks and log-probabilities at once."""
    import torch

    logits = z @ cand.T / temperature
    n = len(z)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(n), torch.arange(n) + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    pos = (indexes[:, None] == cand_idx[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(1)
    has = n_pos > 0
    return (-(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has])).mean()


def child(which: str, world: int, repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from replearn import dist
    from replearn.losses import contrastive

    torch.manual_seed(0)
    z = torch.randn(ANCHORS, DIM, requires_grad=True)
    index = torch.arange(ANCHORS // 2).repeat(2)
    others = F.normalize(torch.randn((world - 1) * ANCHORS, DIM), dim=1)
    other_idx = torch.arange(ANCHORS // 2, ANCHORS // 2 * world).repeat_interleave(2)
    dist.gather = lambda x: torch.cat([x, others if x.dtype.is_floating_point else other_idx.to(x.dtype)])
    dist.rank = lambda: 0

    def loss():
        if which == "blocked":
            return contrastive.nt_xent(z, index, TEMPERATURE)
        zn = F.normalize(z, dim=1)
        return plain_nt_xent(zn, index, TEMPERATURE, dist.gather(zn), dist.gather(index), 0)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best, value = float("inf"), None
    for k in range(repeats + 1):
        z.grad = None
        t = time.perf_counter()
        out = loss()
        out.backward()
        if k:  # the first is the warm-up
            best = min(best, time.perf_counter() - t)
        value = out.item()
    grad = z.grad.double()
    print("NTXENT " + json.dumps({
        "seconds": best, "loss": value, "grad": grad.flatten().tolist(),
        "mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
    }), flush=True)


def run(which: str, world: int, repeats: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--world", str(world),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("NTXENT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{which} W={world} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("NTXENT "):])


def report(rows: dict, args, started: str) -> str:
    lines = [
        "## Measured: the loss in blocks of anchors against plain autograd",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python bench/ntxent.py --repeats {args.repeats}`",
        f"- Commit: {git_commit()}; started {started}",
        "",
        f"NT-Xent forward + backward for one process's {ANCHORS} anchors ({DIM}-d, float32, T {TEMPERATURE}) "
        "against the candidates of W processes, each in its own process; *memory* is the rise of the "
        f"process's peak RSS over the steps (the loss's temporaries); best of {args.repeats}. *blocked* is "
        "replearn's `nt_xent` (logits made, reduced and dropped a block of anchors at a time, made again in the "
        "backward); *plain* is the same formula through plain autograd (the whole logits, masks and "
        "log-probabilities at once), the implementation before. Largest difference of the gradients, relative "
        "to their largest entry, in the last column.",
        "",
        "| W | candidates | blocked ms | plain ms | plain / blocked | blocked memory MiB | plain memory MiB "
        "| loss (both) | gradient difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for world in args.worlds:
        b, p = rows[("blocked", world)], rows[("plain", world)]
        diff = max(abs(x - y) for x, y in zip(b["grad"], p["grad"], strict=True))
        scale = max(abs(y) for y in p["grad"])
        same = f"{b['loss']:.6f}" if abs(b["loss"] - p["loss"]) < 1e-5 else f"{b['loss']:.6f} / {p['loss']:.6f}"
        lines.append(
            f"| {world} | {ANCHORS * world:,} | {b['seconds'] * 1000:.1f} | {p['seconds'] * 1000:.1f} "
            f"| {p['seconds'] / b['seconds']:.2f}x | {b['mib']:.0f} | {p['mib']:.0f} | {same} | {diff / scale:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=list(WORLDS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", help="markdown file whose ntxent section to replace")
    p.add_argument("--child", choices=["blocked", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.world, args.repeats)
        return
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = {}
    for world in args.worlds:
        for which in ("blocked", "plain"):  # taking turns
            rows[(which, world)] = run(which, world, args.repeats)
            r = rows[(which, world)]
            print(f"{which} W={world}: {r['seconds'] * 1000:.1f} ms, {r['mib']:.0f} MiB, loss {r['loss']:.6f}", flush=True)
    text = report(rows, args, started)
    print(text)
    if args.write:
        write_marked(args.write, text, "ntxent")


if __name__ == "__main__":
    main()
