"""DELIFT's distance and the head's precision: ``prob-l2`` (the paper's) against ``nll``.

    .venv/bin/python bench/distance.py            # default model, about 15 minutes on 2 cores
    .venv/bin/python bench/distance.py --model tiny   # smoke

On the quality-prior benchmark's data (``bench/prior_data.py``): ``--targets`` clean target
rows (Q) x the 80 in-family pool rows (32 of them corrupted), scored as DELIFT scores them
(answer tokens, prefix reuse). For each distance, in bf16 (the default on a CPU with native
bf16) twice, the pairs in two orders (seeds 0 and 1), and once with the model in fp32:

- test-retest: the correlation of the two orders' utilities (only batching differs);
- bf16 against fp32: the correlation of the utilities and the Spearman correlation of the
  helper means (a row's mean utility over Q: the signal DELIFT's harm rule reads);
- the helper mean's AUC for corrupted rows (negated: low help is suspicious), per kind;
- the spread: the utilities' interquartile range over their mean absolute value.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prior_data import MC_KINDS, PriorConfig, build  # noqa: E402
from quality_prior import auc  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["default", "tiny"], default="default")
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distance.md")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def load(model: str, dtype: str | None):
    if model == "tiny":
        from curator.testing import tiny_loaded_model

        return tiny_loaded_model("llama", seed=0)
    from curator.models import load_model

    return load_model(None, dtype=dtype) if dtype else load_model(None)


def utilities(lm, samples, pairs, distance: str, seed: int | None) -> np.ndarray:
    """Utilities of ``pairs`` (in their order), scored in the order a seed shuffles them."""
    from curator.config import ScoringOptions
    from curator.scoring.jobs import utility_config
    from curator.scoring.utility import score_pairs

    cfg = dataclasses.replace(utility_config(lm, ScoringOptions(k=8, batch_size=16,
                                                                max_length=512)),
                              distance=distance)
    order = list(range(len(pairs))) if seed is None else \
        np.random.default_rng(seed).permutation(len(pairs)).tolist()
    got: dict[tuple[str, str], float] = {}
    for chunk in score_pairs(lm, samples, [pairs[i] for i in order], cfg, batch_size=16):
        got.update(chunk.as_dict())
    return np.array([got[p] for p in pairs], dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from curator.records import Sample

    started = time.monotonic()
    cfg = PriorConfig()
    if args.model == "tiny":
        cfg = dataclasses.replace(cfg, in_family=20, others=20, target_size=6, eval_size=10)
    data = build(cfg)
    rows = [r for r in data.pool if r.family == "mc"]
    targets = data.target[:args.targets]
    ids = {id(r): Sample.from_pair(r.prompt, r.response) for r in rows + targets}
    samples = {s.sample_id: s for s in ids.values()}
    pairs = [(ids[id(t)].sample_id, ids[id(r)].sample_id) for t in targets for r in rows]
    print(f"{len(targets)} targets x {len(rows)} in-family rows = {len(pairs)} pairs",
          flush=True)

    u: dict[tuple[str, str], np.ndarray] = {}
    secs: dict[tuple[str, str], float] = {}
    for precision in ("bf16", "fp32"):
        lm = load(args.model, None if precision == "bf16" else "fp32")
        for distance in ("prob-l2", "nll"):
            for seed in ((0, 1) if precision == "bf16" else (0,)):
                t = time.monotonic()
                u[(precision, distance, seed)] = utilities(lm, samples, pairs, distance, seed)
                secs[(precision, distance)] = time.monotonic() - t
                print(f"{precision} {distance} order {seed}: {secs[(precision, distance)]:.0f} s",
                      flush=True)
        del lm

    y = np.array([r.corruption is not None for r in rows])
    n_t = len(targets)

    def helper(v: np.ndarray) -> np.ndarray:  # a row's mean utility over Q, negated
        return -np.nanmean(v.reshape(n_t, len(rows)), axis=0)

    def finite(a: np.ndarray, b: np.ndarray) -> float:
        ok = np.isfinite(a) & np.isfinite(b)
        return float(np.corrcoef(a[ok], b[ok])[0, 1])

    lines = ["# DELIFT's distance and the head's precision", "",
             f"Command: `.venv/bin/python bench/distance.py {' '.join(sys.argv[1:])}` "
             f"({dt.date.today()}, {(time.monotonic() - started) / 60:.0f} min). Machine: "
             f"{machine()}.", "",
             f"{n_t} clean target rows x {len(rows)} in-family pool rows ({int(y.sum())} "
             f"corrupted) = {len(pairs)} pairs, answer tokens, prefix reuse. Test-retest: the "
             "same pairs in two orders (bf16). Helper AUC: a row's mean utility over the "
             "targets, negated (low help is suspicious); per kind over the clean rows and "
             "that kind's rows.", "",
             "| distance | test-retest r (bf16) | bf16 vs fp32: r of utilities | bf16 vs "
             "fp32: Spearman of helper means | helper AUC bf16 | helper AUC fp32 | "
             + " | ".join(f"AUC {k} (bf16)" for k in MC_KINDS) + " | IQR / mean abs u |",
             "|---|---|---|---|---|---|" + "---|" * len(MC_KINDS) + "---|"]
    for distance in ("prob-l2", "nll"):
        a, b, f = (u[("bf16", distance, 0)], u[("bf16", distance, 1)],
                   u[("fp32", distance, 0)])
        h, hf = helper(a), helper(f)
        kinds = []
        for kind in MC_KINDS:
            m = np.array([r.corruption in (None, kind) for r in rows])
            kinds.append(f"{auc(y[m], h[m]):.2f}")
        ok = np.isfinite(a)
        q75, q25 = np.percentile(a[ok], [75, 25])
        lines.append(f"| {distance} | {finite(a, b):.4f} | {finite(a, f):.4f} | "
                     f"{spearman(h, hf):.3f} | {auc(y, h):.2f} | {auc(y, hf):.2f} | "
                     + " | ".join(kinds) + f" | {(q75 - q25) / np.mean(np.abs(a[ok])):.2f} |")
    lines += ["", "Seconds per pass: " + ", ".join(f"{p} {d} {s:.0f}"
                                                   for (p, d), s in secs.items()) + "."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def machine() -> str:
    import torch
    from _machine import cpu_name

    bf16 = "AVX512-BF16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no BF16"
    return f"{cpu_name()} ({bf16}), {os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
