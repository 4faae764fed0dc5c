"""What the k-nearest-neighbour candidate graph misses: other ways to choose the scored pairs,
compared on one densely scored pool (no model forward passes: every pair is already stored).

Reads the dense store that ``bench_pruning.py --workdir W`` keeps, then, for each k, builds
the pool x pool kernel from a subset of the stored pairs and runs facility location at each
budget; the objective of each selection is measured on the dense kernel, as a share of the
dense selection's (the same measure as bench_pruning.py):

- knn: the engine's candidate graph (each target's k nearest examples by embedding);
- sym: knn plus the reverse pairs (a target's pairs also with the examples that list it);
- random: as many uniformly drawn pairs as knn has (the floor);
- knn + h hubs (estimated): knn plus every pair of the h examples with the highest mean
  positive utility over the targets knn scored them with (``ScoringOptions(hubs=h)``,
  ``curator.scoring.jobs.hub_examples``);
- knn + h hubs (oracle): knn plus every pair of the h examples with the largest dense column
  sums (needs the dense kernel: an upper bound for hub completion, not a method).

    python bench/bench_pruning.py --n 100 --workdir /tmp/prune-work
    python bench/bench_pruning_variants.py --workdir /tmp/prune-work
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402
from bench_pruning import fl_objective  # noqa: E402

from curator.models import load_model  # noqa: E402
from curator.scoring.jobs import candidate_pairs, ensure_embeddings, hub_examples  # noqa: E402
from curator.scoring.kernels import dense as dense_array  # noqa: E402
from curator.scoring.kernels import utility_kernel  # noqa: E402
from curator.selection import select  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.store.datasets import load_samples  # noqa: E402
from curator.store.scores import load_utilities  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, required=True,
                    help="the folder bench_pruning.py --workdir kept (its dense/ store)")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--hubs", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "bench" / "results" / "pruning_variants.md")
    args = ap.parse_args(argv)
    if not (args.workdir / "dense").exists():
        raise SystemExit(f"no dense store in {args.workdir}: run bench_pruning.py --workdir "
                         f"{args.workdir} first")
    lm = load_model(None)
    store = Store(args.workdir / "dense", create=False)
    pool = load_samples(store, "pool", 1)
    ids = [s.sample_id for s in pool]
    n = len(ids)
    configs = [r[0] for r in store.query("SELECT DISTINCT config FROM utilities WHERE model = ?",
                                          [lm.fingerprint])]
    if len(configs) != 1:
        raise SystemExit(f"expected the utilities of one config in the dense store, found "
                         f"{len(configs)}")
    chash = configs[0]
    rows = load_utilities(store, lm.fingerprint, chash, ids, ids)
    u, valid = rows.utility, rows.valid
    index = {p: i for i, p in enumerate(zip(rows.target_id, rows.example_id, strict=True))}
    off = np.array([t != e for t, e in index], dtype=bool)
    pos = valid & ~np.isnan(u) & off & (u > 0)
    scale = float(u[pos].max())
    if len(index) < n * (n - 1):
        raise SystemExit(f"the dense store holds {len(index)} of {n * (n - 1)} pairs")

    def kernel(pairs) -> object:
        sel = np.array(sorted(index[p] for p in pairs), dtype=np.int64)
        return utility_kernel([rows.target_id[i] for i in sel],
                              [rows.example_id[i] for i in sel], u[sel], valid[sel],
                              row_ids=ids, col_ids=ids, scale=scale).matrix

    D = dense_array(utility_kernel(rows.target_id, rows.example_id, u, valid, row_ids=ids,
                                   col_ids=ids, scale=scale))
    sizes = [max(1, int(round(b * n))) for b in args.budgets]
    best = {m: fl_objective(D, select(kernel(index), m).ranking) for m in sizes}
    col_sum = D.sum(axis=0)
    oracle = [ids[j] for j in np.argsort(-col_sum, kind="stable")]
    emb = ensure_embeddings(store, lm, pool)[0]
    rng = np.random.default_rng(args.seed)
    everything = list(index)

    def full_columns(examples) -> set[tuple[str, str]]:
        return {(t, e) for e in examples for t in ids if t != e}

    lines = []
    for k in args.ks:
        knn, _ = candidate_pairs(pool, pool, emb, emb, k)
        knn = set(knn)
        scored = sorted(index[p] for p in knn)
        estimated = hub_examples([rows.target_id[i] for i in scored],
                                 [rows.example_id[i] for i in scored], u[scored], valid[scored],
                                 max(args.hubs))  # what ScoringOptions(hubs=h) scores
        variants = {"knn": knn, "sym": knn | {(e, t) for t, e in knn},
                    "random": {everything[i] for i in rng.choice(len(everything), len(knn),
                                                                 replace=False)}}
        for h in args.hubs:
            variants[f"knn + {h} hubs (estimated)"] = knn | full_columns(estimated[:h])
            variants[f"knn + {h} hubs (oracle)"] = knn | full_columns(oracle[:h])
        for name, pairs in variants.items():
            k_mat = kernel(pairs)
            ratios = [fl_objective(D, select(k_mat, m).ranking) / best[m] for m in sizes]
            lines.append(f"| {k} | {name} | {len(pairs)} | "
                         + " | ".join(f"{r:.4f}" for r in ratios) + " |")
            print(lines[-1], flush=True)
    cmd = "python bench/bench_pruning_variants.py" + (
        " " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    head = [
        "# Which scored pairs a facility-location selection needs", "",
        f"Command: `{cmd}` on the dense store that `python bench/bench_pruning.py --n {n} "
        f"--workdir {args.workdir}` kept there (with that run's own `--seed`, which chose "
        "the pool)", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}. Date "
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. No forward passes: every "
        "pair was scored by the dense run.", "",
        f"{n} pool samples, {len(index)} stored pairs ({int(pos.sum())} positive). Each cell: "
        "FL objective (on the dense kernel) of the selection made from the variant's pairs / "
        "that of the selection made from all pairs; columns are budgets (share of the pool, "
        "picks).", "",
        "| k | variant | pairs | " + " | ".join(f"{b:g} ({m})" for b, m in
                                               zip(args.budgets, sizes, strict=True)) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    args.out.write_text("\n".join(head + lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
