"""Memory, time and recall of the pool x pool kNN graph: exact search against HNSW.

For each kind of data (``random``: unit normal vectors, no structure, the hard case for
HNSW; ``clustered``: a mixture of ``--clusters`` Gaussian clusters, closer to the cluster
structure of real embeddings, but synthetic) the graph is built twice on the same vectors,
exact (``IndexFlatIP``) and HNSW with the engine's settings; HNSW's recall@k is measured
against the exact graph over every row. Peak RSS (``ru_maxrss``) is read after each build;
it only grows within a process, so exact runs first. The target is under 4 GB at 100k.
Where the engine switches from exact to HNSW (``EXACT_THRESHOLD``) follows from these
times.

    python bench/bench_neighbours.py [--n 100000] [--data random clustered] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402  (bench/ helper, beside this script)

from curator.scoring.neighbours import EXACT_THRESHOLD, pool_neighbours  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def vectors(kind: str, n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        x = centres[rng.integers(clusters, size=n)]
        x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)  # spread within a cluster
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k vectors instead of 100k")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", nargs="+", choices=["random", "clustered"],
                    default=["random", "clustered"])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "neighbours.md"))
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    argv = [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    load_start = os.getloadavg()

    rows = []
    for kind in args.data:
        x = vectors(kind, n, args.dim, args.clusters, np.random.default_rng(args.seed))
        rss_data = peak_rss_gb()
        t0 = time.perf_counter()
        exact = pool_neighbours(x, args.k, exact_threshold=n)
        t_exact = time.perf_counter() - t0
        rss_exact = peak_rss_gb()
        t0 = time.perf_counter()
        hnsw = pool_neighbours(x, args.k, exact_threshold=0)
        t_hnsw = time.perf_counter() - t0
        rss_hnsw = peak_rss_gb()
        hits = sum(len(set(a.tolist()) & set(b.tolist()))
                   for a, b in zip(exact.indices, hnsw.indices, strict=True))
        recall = hits / exact.indices.size
        rows.append(f"| {kind} | exact | {t_exact:.1f} | 1.000 | {rss_data:.2f} | "
                    f"{rss_exact:.2f} |")
        rows.append(f"| {kind} | {hnsw.method} | {t_hnsw:.1f} | {recall:.3f} | "
                    f"{rss_data:.2f} | {rss_hnsw:.2f} |")
        print(rows[-2], rows[-1], sep="\n", flush=True)
        del x, exact, hnsw
    load_end = os.getloadavg()

    lines = [
        "# kNN graph: exact against HNSW", "",
        f"Command: `{command}`", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}. Date "
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. Load average (1/5/15 min) at "
        f"start {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}, at end "
        f"{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}.", "",
        f"{n} x {args.dim} float32 unit vectors; pool x pool graph, k = {args.k}, self "
        f"excluded. `clustered`: {args.clusters} Gaussian centres, within-cluster noise 0.5 "
        "per dimension (synthetic). The engine uses exact search up to "
        f"{EXACT_THRESHOLD:,} vectors and HNSW above. Recall: share of the exact graph's "
        "neighbours that HNSW found, over every row. Peak RSS only grows within the "
        "process (exact ran first on each kind of data).", "",
        "| data | method | build + search s | recall@k | peak RSS before GB | "
        "peak RSS after GB (target < 4) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows, ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
