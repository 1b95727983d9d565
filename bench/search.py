"""Search speed and recall: replearn's exact, HNSW and IVF indexes beside scikit-learn's brute force.

Data: random Gaussian vectors (seeded; 100k x 128-d by default) and separate random queries (1000),
the hardest case for an approximate index (no clusters to exploit). Each index is built by
``replearn.embed.index.build_faiss_index`` with replearn's settings and queried through
``EmbeddingIndex.search_vectors`` (normalisation included), as ``replearn search`` does. Measured:
build seconds; batch latency (all queries in one call, ms per query, mean [min, max] over
``--repeats`` calls); single-query latency (one call per query, mean and 95th percentile);
recall@10 against the exact index. The peer, ``sklearn.neighbors.NearestNeighbors(metric="cosine",
algorithm="brute")``, finds the same exact top-10 (its agreement with the exact index is the recall
column); its times are given as ratios to replearn's exact index. Every library runs on
``--threads`` threads (threadpoolctl for BLAS/OpenMP, ``faiss.omp_set_num_threads``).

    python bench/search.py                                  # 100k x 128, 1000 queries (~4 min on 1 core)
    python bench/search.py --n 20000 --queries 200          # smoke check
    python bench/search.py --write docs/benchmarks.md       # also (re)write the marked section
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import cpu_name, git_commit, write_marked  # noqa: E402

MARKER = "search"
KINDS = ("exact", "hnsw", "ivf")


def recall_at(rows: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (M, k) found in the same row of ``rows`` (M, k)."""
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(rows, truth, strict=True)]))


def timed_batch(search, queries: np.ndarray, repeats: int) -> tuple[list[float], np.ndarray]:
    """(ms per query of each of ``repeats`` calls with all queries, the rows of the last call)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = search(queries)
        out.append(1000 * (time.perf_counter() - t0) / len(queries))
    return out, rows


def timed_single(search, queries: np.ndarray) -> np.ndarray:
    """ms of each query searched alone, (M,)."""
    ms = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        ms[i] = 1000 * (time.perf_counter() - t0)
    return ms


def measure(args) -> dict:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    from replearn.embed.index import EmbeddingIndex, build_faiss_index, index_params

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    base = rng.standard_normal((args.n, args.dim), dtype=np.float32)  # (N, D)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)  # (M, D)
    k, rows_out, truth = args.k, [], None
    for kind in KINDS:
        t0 = time.perf_counter()
        idx = EmbeddingIndex(build_faiss_index(base, kind, seed=args.seed), [str(i) for i in range(args.n)],
                             np.full(args.n, -1))
        build = time.perf_counter() - t0

        def search(q, idx=idx):
            return idx.search_vectors(q, k)[1]

        batch, found = timed_batch(search, queries, args.repeats)
        single = timed_single(search, queries)
        truth = found if kind == "exact" else truth
        rows_out.append({"name": kind, "params": index_params(idx.index), "build_s": build, "batch_ms": batch,
                         "single_ms": float(single.mean()), "single_p95_ms": float(np.percentile(single, 95)),
                         "recall": recall_at(found, truth)})
        print(f"{kind}: build {build:.1f}s, batch {np.mean(batch):.3f} ms/query, single {single.mean():.3f} ms, "
              f"recall@{k} {rows_out[-1]['recall']:.4f}", flush=True)
    t0 = time.perf_counter()
    peer = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(base)
    build = time.perf_counter() - t0

    def peer_search(q):
        return peer.kneighbors(q, k, return_distance=False)

    batch, found = timed_batch(peer_search, queries, args.repeats)
    single = timed_single(peer_search, queries)
    rows_out.append({"name": "sklearn", "params": {"metric": "cosine", "algorithm": "brute"}, "build_s": build,
                     "batch_ms": batch, "single_ms": float(single.mean()),
                     "single_p95_ms": float(np.percentile(single, 95)), "recall": recall_at(found, truth)})
    print(f"sklearn: fit {build:.2f}s, batch {np.mean(batch):.3f} ms/query, single {single.mean():.3f} ms, "
          f"agreement with exact {rows_out[-1]['recall']:.4f}", flush=True)
    return {"rows": rows_out}


def machine(threads: int) -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores; {threads} thread(s) for FAISS, BLAS and OpenMP"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items() if k != "kind") or "-"


def section(result: dict, args, load: tuple[float, float]) -> str:
    from replearn.embed.index import EXACT_MAX

    rows = {r["name"]: r for r in result["rows"]}
    exact, peer = rows["exact"], rows["sklearn"]
    lines = [
        "## Search: exact, HNSW and IVF indexes, and scikit-learn's brute force",
        "",
        f"- Machine: {machine(args.threads)}",
        f"- Versions: faiss {version('faiss-cpu')}, scikit-learn {version('scikit-learn')}, numpy {np.__version__}, "
        f"replearn {version('replearn')}",
        f"- Command: `{shlex.join(['python', *sys.argv])}`",
        f"- Commit: {git_commit()}; date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f} (other work shared the machine: "
        "absolute times are inflated, ratios less so)",
        f"- Data: {args.n:,} random Gaussian {args.dim}-d vectors (seed {args.seed}), {args.queries:,} separate "
        f"random queries, top-{args.k} by cosine similarity. Batch: all queries in one call, ms per query, mean "
        f"[min, max] over {args.repeats} calls. Single: one call per query, mean and 95th percentile. Recall@{args.k}: "
        "the fraction of the exact index's top-10 found (for scikit-learn: its agreement with the exact index).",
        "",
        f"| index | parameters | build s | batch ms/query | single ms/query (p95) | recall@{args.k} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        b = r["batch_ms"]
        name = "scikit-learn brute (peer)" if r["name"] == "sklearn" else f"replearn {r['name']}"
        lines.append(f"| {name} | {_params(r['params'])} | {r['build_s']:.2f} | {np.mean(b):.3f} [{min(b):.3f}, "
                     f"{max(b):.3f}] | {r['single_ms']:.3f} ({r['single_p95_ms']:.3f}) | {r['recall']:.4f} |")
    batch_ratio = np.mean(peer["batch_ms"]) / np.mean(exact["batch_ms"])
    single_ratio = peer["single_ms"] / exact["single_ms"]
    lines += [
        "",
        f"- scikit-learn brute / replearn exact (same exact top-{args.k}): batch **{batch_ratio:.2f}x**, "
        f"single query **{single_ratio:.2f}x** (above 1: replearn is faster)",
    ]
    for kind in ("hnsw", "ivf"):
        r = rows[kind]
        lines.append(f"- replearn {kind} / replearn exact: batch {np.mean(r['batch_ms']) / np.mean(exact['batch_ms']):.2f}x "
                     f"the time, single query {r['single_ms'] / exact['single_ms']:.2f}x, recall@{args.k} "
                     f"{r['recall']:.4f} ({'meets' if r['recall'] >= 0.95 else '**misses**'} the 0.95 bar)")
    slower = [kind for kind in ("hnsw", "ivf") if np.mean(rows[kind]["batch_ms"]) > np.mean(exact["batch_ms"])]
    if slower:
        lines += [
            "",
            f"Reading: random Gaussian vectors are the worst case for approximate search (all points are nearly "
            "equidistant), so recall 0.95 takes large search settings (HNSW efSearch 384; IVF scans 65% of its "
            f"cells), and at {args.n:,} vectors on {args.threads} thread(s) the exact scan (one BLAS product) is "
            f"faster than {' and '.join(slower)}. This is why `replearn index --kind auto` stays exact up to "
            f"{EXACT_MAX:,} vectors: the exact scan's cost grows with N, an HNSW search's far more slowly (arXiv:1603.09320). "
            "Embeddings of real images are clustered and need smaller settings for the same recall; this "
            "benchmark does not measure them.",
        ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="batch calls timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", default=None, help="also write the section into this markdown file")
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    load0 = os.getloadavg()[0]
    with threadpool_limits(args.threads):
        result = measure(args)
    text = section(result, args, (load0, os.getloadavg()[0]))
    print(text)
    if args.write:
        write_marked(args.write, text, MARKER)
    ok = all(r["recall"] >= 0.95 for r in result["rows"] if r["name"] in ("hnsw", "ivf"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
