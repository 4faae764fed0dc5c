"""kNN pruning quality and incremental rescoring cost of DELIFT utility scoring (CPU).

Two targets of the scoring issue, on the embedded default model (SmolLM2-135M-Instruct):

1. Pruning quality. On a set small enough for ``--dense`` (N samples from ../shared/data/t0),
   score all N(N-1) pairs once, then build the pool x pool kernel from (a) all stored pairs
   (dense) and (b) only the pairs of the k-nearest-neighbour candidate graph (pruned; a subset
   of the stored ones, so nothing is scored twice), both with the same scale (the dense
   kernel's largest positive utility). Facility location picks 10/30/50% from each; every
   selection's FL objective is evaluated on the DENSE kernel. Target: pruned / dense >= 0.95
   for k = 8 and 16. A random subset of the same size is given for context. Each budget is
   also run as selection runs it by default (``scoring.hubs: auto``): at budgets of at most
   20% of the pool, the kNN pairs plus every pair of the k hub examples.

2. Incremental cost. kNN scoring (k=8) of version 1 (N samples) in a fresh store; a second
   version appends ~10% new samples; rescoring the whole v2 pool computes only what the
   store lacks. Its wall time is compared with scoring v2 from scratch in another fresh store
   (the same two ingests, nothing scored before). Target: rescore <= 20% of from-scratch,
   on the median of ``--repeats`` repetitions (single runs on this machine vary by ~10%).

    python bench/bench_pruning.py [--n 100] [--ks 4 8 16] [--budgets 0.1 0.3 0.5]
                                  [--skip-dense] [--skip-incremental] [--quick]
                                  [--repeats 3] [--incr-hubs H] [--workdir DIR]
                                  [--note TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402  (bench/ helper, beside this script)

from curator.config import AUTO_HUBS_MAX_SHARE, ScoringOptions  # noqa: E402
from curator.ingestion.ingest import ingest  # noqa: E402
from curator.models import load_model  # noqa: E402
from curator.scoring.jobs import (  # noqa: E402
    candidate_pairs,
    ensure_embeddings,
    hub_examples,
    score_utilities,
    utility_config,
)
from curator.scoring.kernels import dense as dense_array  # noqa: E402
from curator.scoring.kernels import utility_kernel  # noqa: E402
from curator.selection import select  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.store.datasets import load_samples  # noqa: E402
from curator.store.scores import load_utilities  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "t0"
OUT = ROOT / "bench" / "results" / "pruning.md"




def load_rows(n: int, max_chars: int, seed: int) -> list[dict]:
    """n distinct short T0 prompt/completion rows, round-robin over the template files."""
    rng = np.random.default_rng(seed)
    per_file: list[list[dict]] = []
    for f in sorted(glob.glob(str(DATA / "*.jsonl"))):
        rows = [json.loads(line) for line in open(f, encoding="utf-8") if line.strip()]
        order = rng.permutation(len(rows))
        ok = []
        for i in order:
            p = rows[i]["prompt"].strip()
            c = rows[i]["completion"].replace("<|endoftext|>", "").strip()
            if p and c and len(p) + len(c) <= max_chars:
                ok.append({"prompt": p, "completion": c, "task": Path(f).stem})
        per_file.append(ok)
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    pos = [0] * len(per_file)
    while len(out) < n and any(pos[j] < len(r) for j, r in enumerate(per_file)):
        for j, ok in enumerate(per_file):
            if pos[j] < len(ok) and len(out) < n:
                r = ok[pos[j]]
                pos[j] += 1
                if (r["prompt"], r["completion"]) not in seen:
                    seen.add((r["prompt"], r["completion"]))
                    out.append(r)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} rows of <= {max_chars} chars; raise --max-chars")
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")
    return path


def fl_objective(d: np.ndarray, cols: np.ndarray) -> float:
    """Facility location on the dense kernel: sum over rows of the max over picked columns."""
    if len(cols) == 0:
        return 0.0
    return float(d[:, cols].max(axis=1).sum())


# -- 1. pruning quality -------------------------------------------------------------------

def bench_pruning(lm, tmp: Path, pool_file: Path, args, log) -> dict:
    fresh = not (tmp / "dense").exists()
    store = Store(tmp / "dense")
    if fresh:
        ingest(store, str(pool_file), "pool")
    else:  # --workdir kept from an earlier run: its dense utilities are reused, not rescored
        log("dense: reusing the store in the work folder")
    pool = load_samples(store, "pool", 1)
    ids = [s.sample_id for s in pool]
    options = ScoringOptions(dense=True, k=max(args.ks), batch_size=args.batch_size,
                             max_length=args.max_length)
    t0 = time.monotonic()
    summ = score_utilities(store, lm, pool, pool, options)
    wall = time.monotonic() - t0
    log(f"dense: {summ.line()} (wall {wall:.1f} s)")
    t0 = time.monotonic()
    emb = ensure_embeddings(store, lm, pool, batch_size=args.batch_size)[0]
    emb_s = time.monotonic() - t0
    chash = utility_config(lm, options).config_hash()
    rows = load_utilities(store, lm.fingerprint, chash, ids, ids)
    u = rows.utility
    off = np.array([t != e for t, e in zip(rows.target_id, rows.example_id, strict=True)])
    ok = rows.valid & ~np.isnan(u) & off
    pos = ok & (u > 0)
    scale = float(u[pos].max()) if pos.any() else 1.0
    dk = utility_kernel(rows.target_id, rows.example_id, u, rows.valid, row_ids=ids,
                        col_ids=ids, scale=scale)
    D = dense_array(dk)
    n = len(ids)
    budgets = [(b, max(1, int(round(b * n)))) for b in args.budgets]
    dense_sel = {}
    for b, m in budgets:
        r = select(dk.matrix, m, function="facility_location")
        dense_sel[b] = (r.ranking, fl_objective(D, r.ranking))
    rng = np.random.default_rng(args.seed)
    random_obj = {}
    for b, m in budgets:
        vals = [fl_objective(D, rng.choice(n, size=m, replace=False))
                for _ in range(args.random_trials)]
        random_obj[b] = (float(np.mean(vals)), float(np.min(vals)), float(np.max(vals)))
    per_k = []
    pair_index = {(t, e): i for i, (t, e) in enumerate(zip(rows.target_id, rows.example_id,
                                                            strict=True))}
    for k in args.ks:
        pairs, graph = candidate_pairs(pool, pool, emb, emb, k)
        idx = [pair_index[p] for p in pairs if p in pair_index]
        missing = len(pairs) - len(idx)
        sel_idx = np.array(sorted(idx), dtype=np.int64)
        pk = utility_kernel([rows.target_id[i] for i in sel_idx],
                            [rows.example_id[i] for i in sel_idx], u[sel_idx],
                            rows.valid[sel_idx], row_ids=ids, col_ids=ids, scale=scale)
        # share of the dense kernel's positive off-diagonal entries that the pruned kernel keeps
        kept_pos = int(pos[sel_idx].sum())
        res, auto = [], []
        for b, m in budgets:
            r = select(pk.matrix, m, function="facility_location")
            obj = fl_objective(D, r.ranking)
            overlap = len(set(r.ranking.tolist()) & set(dense_sel[b][0].tolist())) / m
            res.append((b, m, obj, obj / dense_sel[b][1], overlap))
            # what selection does by default (scoring.hubs: auto): at small budgets the kNN
            # pairs plus every pair of the k hub examples (score_utilities' second pass)
            h = ScoringOptions(k=k).resolved_hubs(m, n)
            if not h:
                auto.append((0, len(pairs), obj / dense_sel[b][1]))
                continue
            hubs = hub_examples([rows.target_id[i] for i in sel_idx],
                                [rows.example_id[i] for i in sel_idx], u[sel_idx],
                                rows.valid[sel_idx], h)
            with_hubs = set(pairs) | {(t, e) for e in hubs for t in ids if t != e}
            hub_idx = np.array(sorted(pair_index[p] for p in with_hubs), dtype=np.int64)
            hk = utility_kernel([rows.target_id[i] for i in hub_idx],
                                [rows.example_id[i] for i in hub_idx], u[hub_idx],
                                rows.valid[hub_idx], row_ids=ids, col_ids=ids, scale=scale)
            rh = select(hk.matrix, m, function="facility_location")
            auto.append((h, len(with_hubs), fl_objective(D, rh.ranking) / dense_sel[b][1]))
        per_k.append({"k": k, "graph": graph, "pairs": len(pairs), "missing": missing,
                      "nnz": int(pk.matrix.nnz), "kept_pos": kept_pos, "res": res,
                      "auto": auto})
        log(f"k={k}: {len(pairs)} pairs ({missing} missing), ratios "
            + ", ".join(f"{b:g}: {x[3]:.4f}" for b, x in zip(args.budgets, res, strict=True))
            + "; with auto hubs "
            + ", ".join(f"{b:g}: {a[2]:.4f}" for b, a in zip(args.budgets, auto, strict=True)))
    return {"n": n, "summary": summ, "wall": wall, "emb_s": emb_s, "scale": scale,
            "n_rows": len(rows.target_id), "n_valid": int(ok.sum()), "n_pos": int(pos.sum()),
            "dense_nnz": int(dk.matrix.nnz), "budgets": budgets, "dense_sel": dense_sel,
            "random": random_obj, "per_k": per_k}


# -- 2. incremental cost ------------------------------------------------------------------

def score_timed(store, lm, samples, options):
    t0 = time.monotonic()
    s = score_utilities(store, lm, samples, samples, options)
    return s, time.monotonic() - t0


def bench_incremental(lm, tmp: Path, pool_file: Path, new_file: Path, args,
                      log) -> list[dict]:
    """``args.repeats`` independent repetitions (fresh stores each): on a shared machine one
    wall-time ratio is a sample, and the verdict is taken on their median."""
    options = ScoringOptions(k=args.incr_k, batch_size=args.batch_size,
                             max_length=args.max_length, hubs=args.incr_hubs)
    out = []
    for rep in range(args.repeats):
        incr, scratch = tmp / f"incr-{rep}", tmp / f"scratch-{rep}"
        for folder in (incr, scratch):  # timed from nothing, even in a kept --workdir
            shutil.rmtree(folder, ignore_errors=True)
        store = Store(incr)
        ingest(store, str(pool_file), "pool")
        pool1 = load_samples(store, "pool", 1)
        s1, w1 = score_timed(store, lm, pool1, options)
        log(f"[{rep + 1}] v1: {s1.line()} (wall {w1:.1f} s)")
        ingest(store, str(new_file), "pool", append=True)
        pool2 = load_samples(store, "pool", 2)
        s2, w2 = score_timed(store, lm, pool2, options)
        log(f"[{rep + 1}] v2 rescore: {s2.line()} (wall {w2:.1f} s)")
        res = {"n1": len(pool1), "n2": len(pool2), "s1": s1, "w1": w1, "s2": s2, "w2": w2,
               "scratch": None}
        if not args.no_scratch:
            fresh = Store(scratch)
            ingest(fresh, str(pool_file), "pool")
            ingest(fresh, str(new_file), "pool", append=True)
            pool2b = load_samples(fresh, "pool", 2)
            s3, w3 = score_timed(fresh, lm, pool2b, options)
            log(f"[{rep + 1}] v2 from scratch: {s3.line()} (wall {w3:.1f} s)")
            res["scratch"] = (s3, w3)
        out.append(res)
    return out


# -- report -------------------------------------------------------------------------------

def report(args, machine: dict, sizes: str, dense_res: dict | None, incr: dict | None,
           load_end: tuple[float, float, float] | None, done: bool) -> str:
    la0 = machine["load_start"]
    lines = ["# kNN pruning quality and incremental rescoring cost", ""]
    if not done:
        lines += ["**Partial: the run had not finished when this was written.**", ""]
    lines += [f"Command: `{machine['command']}`", "",
              f"Machine: {machine['cpu']}, {machine['cpus']} logical CPUs, {machine['platform']}, "
              f"Python {platform.python_version()}, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), model {machine['model']} "
              f"({machine['dtype']}, {machine['device']}). Date {machine['date']}. "
              f"Load average (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}"
              + (f", at end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}"
                 if load_end else "")
              + "." + (f" {args.note}" if args.note else ""), "", sizes, ""]
    if args.n < 100:
        lines += [f"**N = {args.n} is below the 100 samples the target names** (dense scoring "
                  "of N(N-1) pairs at N=100 did not fit this session's time on the shared "
                  "CPU). For N=100 run: `python bench/bench_pruning.py --n 100`.", ""]
    if dense_res:
        r = dense_res
        s = r["summary"]
        lines += ["## 1. Pruning quality (facility location, objective on the dense kernel)", "",
                  f"Dense scoring: {s.n_pairs} pairs ({s.n_computed} computed, {s.n_reused} "
                  f"reused, {s.n_invalid} invalid) in {r['wall']:.1f} s wall "
                  f"({s.pairs_per_second:.2f} pairs/s). Embeddings for the kNN graph: "
                  f"{r['emb_s']:.1f} s. Stored rows {r['n_rows']}, valid off-diagonal "
                  f"{r['n_valid']}, positive {r['n_pos']}; common scale (dense max positive "
                  f"utility) {r['scale']:.4g}; dense kernel nnz {r['dense_nnz']} "
                  "(positive pairs + diagonal).", "",
                  "| k | graph | pruned pairs | not in dense store | pruned nnz | positive "
                  "pairs kept | budget | size | FL(pruned sel) on dense | FL(dense sel) | "
                  "ratio | overlap with dense sel | default: hubs (auto) | pairs | ratio |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                  "| --- | --- | --- |"]
        for pk in r["per_k"]:
            for (b, m, obj, ratio, ov), (h, hp, hr) in zip(pk["res"], pk["auto"], strict=True):
                lines.append(f"| {pk['k']} | {pk['graph']} | {pk['pairs']} | {pk['missing']} | "
                             f"{pk['nnz']} | {pk['kept_pos']} / {r['n_pos']} | {b:g} | {m} | "
                             f"{obj:.3f} | {r['dense_sel'][b][1]:.3f} | {ratio:.4f} | "
                             f"{ov:.2f} | {h} | {hp} | {hr:.4f} |")
        lines += ["", "The last three columns are what a selection does by default "
                  "(`scoring.hubs: auto`): at budgets of at most "
                  f"{AUTO_HUBS_MAX_SHARE:.0%} of the pool it also scores the k hub examples "
                  "(`hub_examples` over the kNN pairs) against every target; elsewhere it is "
                  "the plain kNN kernel."]
        lines += ["", f"Random baseline ({args.random_trials} uniform subsets per budget, "
                  f"seed {args.seed}), FL on the dense kernel:", "",
                  "| budget | size | FL(random) mean | min | max | ratio mean / dense sel |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for b, m in r["budgets"]:
            mean, lo, hi = r["random"][b]
            lines.append(f"| {b:g} | {m} | {mean:.3f} | {lo:.3f} | {hi:.3f} | "
                         f"{mean / r['dense_sel'][b][1]:.4f} |")
        lines += [""]
        for k in (8, 16):
            pk = next((p for p in r["per_k"] if p["k"] == k), None)
            if pk is None:
                lines.append(f"- k = {k}: not run.")
                continue
            worst = min(x[3] for x in pk["res"])
            worst_auto = min(a[2] for a in pk["auto"])
            verdict = "MET" if worst >= 0.95 else "NOT MET"
            verdict_auto = "MET" if worst_auto >= 0.95 else "NOT MET"
            lines.append(f"- Target (pruned/dense >= 0.95) for k = {k}: plain kNN kernel "
                         f"**{verdict}** (lowest ratio over budgets {worst:.4f}); as selection "
                         f"runs by default (auto hubs) **{verdict_auto}** (lowest "
                         f"{worst_auto:.4f}); N = {r['n']}.")
        lines.append("")
    elif args.skip_dense:
        lines += ["## 1. Pruning quality", "", "Skipped (`--skip-dense`).", ""]
    if incr:
        first = incr[0]
        lines += ["## 2. Incremental cost (kNN scoring, k = "
                  f"{args.incr_k}" + (f", + {args.incr_hubs} hubs" if args.incr_hubs else "")
                  + ")", "",
                  f"v1: {first['n1']} samples; v2 = v1 + {first['n2'] - first['n1']} appended "
                  f"({(first['n2'] - first['n1']) / first['n1']:.1%} new). Times are wall "
                  "seconds around `score_utilities` (embedding included). "
                  f"{len(incr)} repetition(s), each in fresh stores.", "",
                  "| repetition | run | samples | pairs wanted | computed | reused | invalid | "
                  "embedded | wall s | pairs/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def row(rep, name, n, s, w):
            return (f"| {rep} | {name} | {n} | {s.n_pairs} | {s.n_computed} | {s.n_reused} | "
                    f"{s.n_invalid} | {s.n_embedded} | {w:.1f} | {s.pairs_per_second:.2f} |")
        shares = []
        for rep, r in enumerate(incr, start=1):
            lines.append(row(rep, "v1 from scratch", r["n1"], r["s1"], r["w1"]))
            lines.append(row(rep, "v2 rescore (after v1)", r["n2"], r["s2"], r["w2"]))
            if r["scratch"]:
                s3, w3 = r["scratch"]
                lines.append(row(rep, "v2 from scratch (fresh store)", r["n2"], s3, w3))
                shares.append(r["w2"] / w3)
            else:
                shares.append(r["w2"] / (r["w1"] * r["s2"].n_pairs / max(r["s1"].n_pairs, 1)))
        lines.append("")
        s2 = first["s2"]
        computed = (f"pairs computed {s2.n_computed} / {first['scratch'][0].n_computed} = "
                    f"{s2.n_computed / max(first['scratch'][0].n_computed, 1):.1%}"
                    if first["scratch"] else "v2 from scratch was not run (`--no-scratch`)")
        basis = ("the measured from-scratch runs" if first["scratch"]
                 else "v1 time scaled by pairs wanted")
        median = float(np.median(shares))
        lines.append(f"- Rescore wall time / v2 from scratch, per repetition: "
                     f"{', '.join(f'{x:.1%}' for x in shares)}; median {median:.1%}; "
                     f"{computed}.")
        verdict = "MET" if median <= 0.20 else "NOT MET"
        lines.append(f"- Target (rescore <= 20% of scratch, against {basis}, on the "
                     f"median): **{verdict}** ({median:.1%}).")
        lines.append("")
    elif args.skip_incremental:
        lines += ["## 2. Incremental cost", "", "Skipped (`--skip-incremental`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="pool size (v1)")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--skip-dense", action="store_true", help="skip the pruning benchmark")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--no-scratch", action="store_true",
                    help="do not score v2 in a fresh store; compare with v1 scaled by pairs")
    ap.add_argument("--quick", action="store_true", help="n=20, ks 4 8, for a smoke test")
    ap.add_argument("--incr-k", type=int, default=8)
    ap.add_argument("--incr-hubs", type=int, default=0,
                    help="hub examples scored in the incremental runs (what small budgets use)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="repetitions of the incremental measurement (verdict on the median)")
    ap.add_argument("--new-frac", type=float, default=0.1)
    ap.add_argument("--max-chars", type=int, default=300,
                    help="keep rows whose prompt + completion is at most this many chars")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--random-trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the stores here (a rerun reuses the dense utilities)")
    ap.add_argument("--note", default="",
                    help="a sentence for the report about the machine's state (e.g. its load)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 20)
        args.ks = [k for k in args.ks if k <= 8] or [4]
    cmd = "python bench/bench_pruning.py" + (" " + shlex.join(sys.argv[1:]) if argv is None
                                              and sys.argv[1:] else "")
    load_start = os.getloadavg()
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {msg}", flush=True)

    n_new = max(1, math.ceil(args.new_frac * args.n))
    rows = load_rows(args.n + n_new, args.max_chars, args.seed)
    pool_rows, new_rows = rows[:args.n], rows[args.n:]
    lm = load_model(None)
    machine = {"command": cmd, "cpu": cpu_name(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "model": "smollm2-135m-instruct (default)",
               "dtype": str(getattr(lm.model, "dtype", "?")),
               "device": str(getattr(lm.model, "device", "?")),
               "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "load_start": load_start}
    lens = [len(r["prompt"]) + len(r["completion"]) for r in rows]
    sizes = (f"Data: {args.n} pool samples + {n_new} new ones for v2, T0 prompt/completion rows "
             f"from {len({r['task'] for r in rows})} template files of ../shared/data/t0 "
             f"(round-robin, shuffled with seed {args.seed}, prompt + completion <= "
             f"{args.max_chars} chars: mean {np.mean(lens):.0f}, max {max(lens)}). Scoring: "
             f"distance prob-l2, batch size {args.batch_size}, max_length {args.max_length}. "
             f"Budgets {', '.join(f'{b:g}' for b in args.budgets)}; ks "
             f"{', '.join(map(str, args.ks))}.")
    log(f"n={args.n} new={n_new} threads={torch.get_num_threads()} load={load_start}")
    dense_res = incr = None
    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = args.workdir
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_pruning_")))
        pool_file = write_jsonl(tmp / "pool.jsonl", pool_rows)
        new_file = write_jsonl(tmp / "new.jsonl", new_rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not args.skip_dense:
            dense_res = bench_pruning(lm, tmp, pool_file, args, log)
            args.out.write_text(report(args, machine, sizes, dense_res, None, None, False))
        if not args.skip_incremental:
            incr = bench_incremental(lm, tmp, pool_file, new_file, args, log)
    text = report(args, machine, sizes, dense_res, incr, os.getloadavg(), True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
