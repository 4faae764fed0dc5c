"""Speed and objective of curator's greedy selection against apricot and submodlib.

    .venv/bin/python bench/bench_selection.py --sizes 10000 100000 1000000 --k 32 --budget 0.1

The kernel: N points drawn uniformly in [0, 1]^dim (seeded), their k nearest neighbours
(self included) by scipy's cKDTree, similarity ``exp(-(d / sigma)^2)`` with sigma the median
distance to the k-th neighbour, so values are in (0, 1] and S[i, i] = 1. It is symmetrised
as ``max(S, S.T)`` (the union kNN graph): submodlib's sparse mode only agrees with its own
dense mode on symmetric kernels, and apricot wants candidates as rows, so a symmetric kernel
makes all three libraries optimise the same function. Rows therefore hold k to ~2k entries.

FLMI/FLVMI get a query set Q and FLCG a private set P, each N/100 random points, as sparse
(N, N/100) kernels of each point's 8 nearest members of the set, built the same way.

Each of curator's function x optimizer runs in this process after a warm-up on a tiny
kernel (so numba's compile/cache load is excluded; it is timed once separately). apricot's
and submodlib's facility location run in a subprocess each, with a time limit, on the same
kernel saved to a temporary .npz; their time is that of the fit/maximize call alone, and
their selection is scored with curator's own facility location so objectives compare.
Naive greedy is run only up to --naive-max candidates (it costs O(N * nnz-per-column) per pick).

"stochastic" is curator's default stochastic greedy (a uniform sample per pick, lazily
evaluated, plus up to 8 lazy re-evaluations of the best candidates evaluated so far);
"stochastic-sample-only" is the same with the memory off (``maximize(..., memory_evals=0)``):
each pick is the best of its sample alone, as in plain stochastic greedy. It is timed the same way as
``select`` (build the function, maximise, evaluate the objective).

The machine's load average (os.getloadavg) is recorded before and after the run: the times
are wall seconds and depend on it, the objectives do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FUNCTIONS = ["facility_location", "flmi", "flvmi", "flcg", "graph_cut"]
OPTIMIZERS = ["naive", "lazy", "stochastic", "stochastic-sample-only"]


def knn_similarity(points: np.ndarray, refs: np.ndarray, k: int, workers: int) -> sp.csr_matrix:
    """(len(points), len(refs)) CSR: each point's k nearest refs, exp(-(d / sigma)^2)."""
    k = min(k, len(refs))
    dist, idx = cKDTree(refs).query(points, k=k, workers=workers)
    dist, idx = dist.reshape(len(points), k), idx.reshape(len(points), k)
    sigma = float(np.median(dist[:, -1])) or 1.0
    values = np.exp(-((dist / sigma) ** 2)).ravel()
    indptr = np.arange(0, len(points) * k + 1, k)
    return sp.csr_matrix((values, idx.ravel(), indptr), shape=(len(points), len(refs)))


def build_kernels(n: int, k: int, dim: int, seed: int, workers: int):
    rng = np.random.default_rng(seed)
    x = rng.random((n, dim))
    s = knn_similarity(x, x, k, workers)
    s = s.maximum(s.T).tocsr()  # symmetric union kNN graph, (n, n)
    s.setdiag(1.0)
    m = max(10, n // 100)
    q = knn_similarity(x, x[rng.choice(n, m, replace=False)], 8, workers)  # (n, m)
    p = knn_similarity(x, x[rng.choice(n, m, replace=False)], 8, workers)  # (n, m)
    return s, q, p


# ---- the reference libraries, each in its own subprocess ---------------------------------------


def _worker(lib: str, kernel_path: str, budget: int, optimizer: str) -> None:
    s = sp.load_npz(kernel_path).tocsr()
    if lib == "apricot":
        from apricot import FacilityLocationSelection

        x = sp.csr_matrix(
            s.T
        )  # apricot: rows are candidates; int32 indices or its numba path fails
        x.indices = x.indices.astype(np.int32)
        x.indptr = x.indptr.astype(np.int32)
        sel = FacilityLocationSelection(budget, metric="precomputed", optimizer=optimizer)
        t0 = time.perf_counter()
        sel.fit(x)
        seconds = time.perf_counter() - t0
        ranking = np.asarray(sel.ranking)
    else:
        from submodlib.functions.facilityLocation import FacilityLocationFunction

        k_max = int(np.diff(s.indptr).max())
        t0 = time.perf_counter()
        fn = FacilityLocationFunction(n=s.shape[0], mode="sparse", sijs=s, num_neighbors=k_max)
        name = {"lazy": "LazyGreedy", "stochastic": "StochasticGreedy", "naive": "NaiveGreedy"}[
            optimizer
        ]
        picks = fn.maximize(budget=budget, optimizer=name, show_progress=False)
        seconds = time.perf_counter() - t0  # includes building submodlib's C++ kernel copy
        ranking = np.array([j for j, _ in picks])
    print(json.dumps({"seconds": seconds, "ranking": ranking.tolist()}))


def run_reference(lib, kernel_path, budget, optimizer, timeout):
    cmd = [sys.executable, __file__, "--worker", lib, "--kernel-file", kernel_path,
           "--worker-budget", str(budget), "--worker-optimizer", optimizer]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"did not finish in {timeout:.0f}s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"failed: {last[:120]}"
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data, None


def run_curator(kernel, budget: int, function: str, optimizer: str, seed: int, kw: dict):
    """(objective, gain evaluations) of one curator selection."""
    from curator.selection import build_function, select
    from curator.selection.optimizers import maximize

    if optimizer != "stochastic-sample-only":
        r = select(kernel, budget, function, optimizer, seed=seed, **kw)
        return r.objective, r.n_evaluations
    f = build_function(function, kernel, **kw)
    picks = maximize(f, budget, optimizer="stochastic", seed=seed, memory_evals=0)
    return f.evaluate_jit(picks.ranking), picks.n_evaluations


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--budget", type=float, default=0.1, help="fraction of N to select")
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--functions", nargs="+", default=FUNCTIONS, choices=FUNCTIONS)
    ap.add_argument("--optimizers", nargs="+", default=OPTIMIZERS, choices=OPTIMIZERS)
    ap.add_argument("--naive-max", type=int, default=20_000)
    ap.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per reference-library run"
    )
    ap.add_argument("--no-reference", action="store_true", help="skip apricot and submodlib")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "selection.md")
    ap.add_argument("--note", default="", help="a line to add under the header (e.g. machine load)")
    # internal: one reference-library run
    ap.add_argument("--worker", choices=["apricot", "submodlib"], help=argparse.SUPPRESS)
    ap.add_argument("--kernel-file", help=argparse.SUPPRESS)
    ap.add_argument("--worker-budget", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-optimizer", default="lazy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.kernel_file, args.worker_budget, args.worker_optimizer)
        return

    from curator.selection import build_function

    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    tiny = np.eye(4)
    for fn in FUNCTIONS:  # compile or load numba's cache before timing anything
        kw = {"query_kernel": tiny} if fn in ("flmi", "flvmi") else {}
        kw.update({"private_kernel": tiny} if fn == "flcg" else {})
        for opt in OPTIMIZERS:
            run_curator(tiny, 2, fn, opt, 0, kw)
    warmup = time.perf_counter() - t0

    load_before = os.getloadavg()
    command = "python bench/bench_selection.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Selection benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"run {dt.datetime.now().astimezone().isoformat(timespec='seconds')}.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        f"Kernel: N uniform points in [0, 1]^{args.dim}, k={args.k} nearest neighbours (cKDTree), "
        "exp(-(d/sigma)^2), symmetrised max(S, S^T), unit diagonal. Budget: "
        f"{args.budget:g} of N. Times are wall seconds of one selection call (kernel already built; "
        f"curator's numba cache warm-up, once per process: {warmup:.1f}s). Objective is facility "
        "location (or the function named) of the selected set; 'vs lazy' is relative to curator's "
        "lazy greedy on the same function.",
        "",
        "| N | nnz/row | function | implementation | optimizer | seconds | objective | vs lazy | gain evaluations |",
        "|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for n in args.sizes:
        t = time.perf_counter()
        s, q, p = build_kernels(n, args.k, args.dim, args.seed, workers)
        build = time.perf_counter() - t
        budget = max(1, round(args.budget * n))
        print(f"N={n}: kernel built in {build:.1f}s, nnz={s.nnz}", flush=True)
        nnz_row = f"{s.nnz / n:.1f}"
        lazy_obj: dict[str, float] = {}
        for fn in args.functions:
            kw = {}
            if fn in ("flmi", "flvmi"):
                kw["query_kernel"] = q
            if fn == "flcg":
                kw["private_kernel"] = p
            # lazy first: it is the yardstick of the 'vs lazy' column
            for opt in ["lazy"] + [o for o in args.optimizers if o != "lazy"]:
                if opt == "naive" and n > args.naive_max:
                    row = (f"| {n} | {nnz_row} | {fn} | curator | naive | skipped (N > --naive-max) "
                           "| | | |")  # fmt: skip
                    lines.append(row)
                    continue
                t = time.perf_counter()
                objective, n_evals = run_curator(s, budget, fn, opt, args.seed, kw)
                sec = time.perf_counter() - t
                if opt == "lazy":
                    lazy_obj[fn] = objective
                rel = objective / lazy_obj[fn] - 1 if lazy_obj.get(fn) else float("nan")
                print(f"  {fn} {opt}: {sec:.2f}s objective {objective:.6g}", flush=True)
                lines.append(
                    f"| {n} | {nnz_row} | {fn} | curator | {opt} | {sec:.2f} | {objective:.6g} "
                    f"| {rel:+.3%} | {n_evals} |"
                )
        if args.no_reference or "facility_location" not in args.functions:
            continue
        fl = build_function("facility_location", s)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.npz")
            sp.save_npz(path, s)
            for lib in ("apricot", "submodlib"):
                for opt in [o for o in ("lazy", "stochastic") if o in args.optimizers]:
                    data, err = run_reference(lib, path, budget, opt, args.timeout)
                    if err:
                        print(f"  {lib} {opt}: {err}", flush=True)
                        lines.append(
                            f"| {n} | {nnz_row} | facility_location | {lib} | {opt} | {err} | | | |"
                        )
                        continue
                    obj = fl.evaluate_jit(np.array(data["ranking"], dtype=np.int64))
                    rel = obj / lazy_obj["facility_location"] - 1
                    print(f"  {lib} {opt}: {data['seconds']:.2f}s objective {obj:.6g}", flush=True)
                    lines.append(
                        f"| {n} | {nnz_row} | facility_location | {lib} | {opt} | {data['seconds']:.2f} "
                        f"| {obj:.6g} | {rel:+.3%} | |"
                    )
    load_after = os.getloadavg()
    loads = (
        f"Load average (1 / 5 / 15 min, os.getloadavg) on the {os.cpu_count()} CPUs: "
        f"{' / '.join(f'{x:.2f}' for x in load_before)} before the run, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} after it."
    )
    at = next(i for i, line in enumerate(lines) if line.startswith("Machine:")) + 2
    lines[at:at] = [loads, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
