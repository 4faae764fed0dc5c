"""Benchmark: fine-tuning steps on a CPU, padded batches against length-sorted micro-batches,
and AdamW's for-each update against the fused one.

``curator.training.finetune.train`` runs a batch as micro-batches of similar length
(``curator.scoring.encoding.length_groups``) on a CPU, where a padded token costs as much
as a real one, and builds a fused AdamW. Both give the same steps (to float rounding:
``tests/training/test_finetune.py``); this measures what they save on the default model,
full fine-tuning, batch 8, on real T0 rows of mixed length (../shared/data/t0), as
``curator train`` runs it (fp32) and as ``bench/quality_prior.py`` runs it (fp32 weights,
bf16 autocast, where the CPU has bf16). Every configuration trains the same steps from the
same weights in one process, after one warm-up step, so the ratios compare like with like.

    .venv/bin/python bench/bench_train.py              # ~6 min on 2 CPU cores
    .venv/bin/python bench/bench_train.py --steps 3    # quicker, noisier

Writes bench/results/train.md.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_name  # noqa: E402
from bench_gradients import DATA, t0_samples  # noqa: E402

import curator.training.finetune as ft  # noqa: E402
from curator.records import Sample  # noqa: E402

SEED = 1  # the training seed: the batch order
# (label, unpad, fused)
CONFIGS = (("padded batches, for-each AdamW (before)", False, False),
           ("padded batches, fused AdamW", False, True),
           ("micro-batches, for-each AdamW", True, False),
           ("micro-batches, fused AdamW (the default)", True, True))


@contextlib.contextmanager
def optimizer(fused: bool):
    """The library's optimizer, or the same groups with the for-each update."""
    build = ft.build_optimizer

    def unfused(*a, **k):
        opt = build(*a, **k)
        groups = [{**g, "fused": None} for g in opt.param_groups]
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])

    ft.build_optimizer = build if fused else unfused
    try:
        yield
    finally:
        ft.build_optimizer = build


def mixed_samples(n: int, seed: int = 0) -> list[Sample]:
    """A pool as curation sees one: three T0 rows to one GSM8K train row (worked solutions,
    several times longer), shuffled."""
    import json
    import random

    long_rows = []
    with (DATA.parent / "gsm8k" / "train_first2000.jsonl").open() as fh:
        for line in fh:
            r = json.loads(line)
            long_rows.append(Sample.from_pair(r["question"], r["answer"], {"task": "gsm8k"}))
            if len(long_rows) == n // 4:
                break
    rows = t0_samples(n - len(long_rows), seed) + long_rows
    random.Random(seed).shuffle(rows)
    return rows


@contextlib.contextmanager
def counted(tally: list[int]):
    """Count (real, computed) tokens of every batch ``train`` collates into ``tally``."""
    collate = ft.collate

    def counting(rows, *a, **k):
        lengths = [len(r.input_ids) for r in rows]
        tally[0] += sum(lengths)
        tally[1] += len(lengths) * max(lengths)
        return collate(rows, *a, **k)

    ft.collate = counting
    try:
        yield
    finally:
        ft.collate = collate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from curator.models import load_model

    lm = load_model(None, dtype="fp32")
    base = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    n = args.batch_size * (args.steps + 1)
    pools = {"T0 rows": t0_samples(n, seed=0), "T0 and GSM8K, 3:1": mixed_samples(n, seed=0)}
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() \
        if Path("/proc/cpuinfo").exists() else False
    modes = [("fp32 (curator train)", None)]
    if bf16:
        modes.append(("bf16 autocast (bench/quality_prior.py)", torch.bfloat16))
    lines = ["# Fine-tuning steps: micro-batches and fused AdamW", "",
             f"Command: `{' '.join(['.venv/bin/python bench/bench_train.py'] + sys.argv[1:])}`. "
             f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, Python {platform.python_version()}.", "",
             f"SmolLM2-135M-Instruct, full fine-tuning, batch {args.batch_size}, "
             f"{args.steps} timed steps after one warm-up step; micro-batches count "
             f"{ft.MICRO_BATCH_OVERHEAD} tokens for each extra forward.", ""]
    for pool, samples in pools.items():
        lines += [f"## {pool}", "", "Tokens: what the timed steps computed, over their real "
                  "tokens (padding counts).", "",
                  "| training | configuration | tokens | s a step | speed-up over before "
                  "| last loss |", "|---|---|---|---|---|---|"]
        for mode, dtype in modes:
            ref = None
            for label, unpad, fused in CONFIGS:
                lm.model.load_state_dict(base)
                cast = torch.autocast("cpu", dtype=dtype, cache_enabled=False) if dtype \
                    else contextlib.nullcontext()
                times: list[float] = []
                last = [time.perf_counter()]
                tally = [0, 0]

                def tick(step, total, loss, times=times, last=last, tally=tally):
                    now = time.perf_counter()
                    times.append(now - last[0])
                    last[0] = now
                    if step == 1:  # the warm-up step is not counted
                        tally[:] = [0, 0]

                with optimizer(fused), counted(tally), cast:
                    last[0] = time.perf_counter()
                    res = ft.train(lm, None, samples, steps=args.steps + 1, lr=1e-5,
                                   batch_size=args.batch_size, seed=SEED, unpad=unpad,
                                   progress=tick)
                per_step = sum(times[1:]) / args.steps  # the first step warms up
                ref = ref or per_step
                print(f"{pool} | {mode} | {label}: {per_step:.2f} s a step, last loss "
                      f"{res.losses[-1]:.4f}", flush=True)
                lines.append(f"| {mode} | {label} | {tally[1] / tally[0]:.2f}x | "
                             f"{per_step:.2f} | {ref / per_step:.2f}x | {res.losses[-1]:.4f} |")
        lines.append("")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
