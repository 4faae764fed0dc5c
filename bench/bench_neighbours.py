"""Memory and time of the kNN graph on random unit vectors (default 100k x 384, pool x pool).

Peak RSS is read from the kernel (``ru_maxrss``) of this process, which holds the vectors,
FAISS's index and the (n, k) results; the target is under 4 GB. Recall of the approximate
path is measured on a sample of queries against exact search.

    python bench/bench_neighbours.py [--quick] [--out bench/results/neighbours.md]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402  (bench/ helper, beside this script)

from curator.scoring.neighbours import EXACT_THRESHOLD, knn, pool_neighbours  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k vectors instead of 100k")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--recall-queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "neighbours.md"))
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    argv = [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    load_start = os.getloadavg()[0]

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rss_data = peak_rss_gb()

    t0 = time.perf_counter()
    nb = pool_neighbours(x, args.k)
    t_graph = time.perf_counter() - t0
    rss_graph = peak_rss_gb()

    # Recall of the graph against exact search on a sample of rows.
    rows = rng.choice(n, size=min(args.recall_queries, n), replace=False)
    t0 = time.perf_counter()
    exact = knn(x[rows], x, args.k + 1, exact_threshold=n)  # includes self
    t_exact = time.perf_counter() - t0
    recall = []
    for r, want in zip(rows, exact.indices, strict=True):
        want = [w for w in want if w != r][: args.k]
        recall.append(len(set(want) & set(nb.indices[r].tolist())) / args.k)
    load_end = os.getloadavg()[0]

    lines = [
        "# kNN graph: memory and time", "",
        f"Command: `{command}`", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs. Load average (1 min) "
        f"{load_start:.1f} at start, {load_end:.1f} at end: the CPU was shared with other "
        "work, so times are upper bounds.", "",
        "| what | value |", "| --- | --- |",
        f"| vectors | {n} x {args.dim} float32 unit vectors (random normal) |",
        f"| graph | pool x pool, k = {args.k}, self excluded |",
        f"| method | {nb.method} (exact below {EXACT_THRESHOLD} vectors) |",
        f"| build + search time | {t_graph:.1f} s |",
        f"| peak RSS after the data | {rss_data:.2f} GB |",
        f"| peak RSS after the graph | {rss_graph:.2f} GB (target < 4 GB) |",
        f"| recall@{args.k} vs exact ({len(rows)} rows) | {np.mean(recall):.3f} |",
        f"| exact search for those rows | {t_exact:.1f} s |", "",
        "Random high-dimensional vectors are the hard case for HNSW (no cluster structure); "
        "recall on real embeddings is higher.", "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
