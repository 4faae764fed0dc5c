"""Benchmark: hook-based per-sample gradient scores <u, g_n> against exact per-sample autograd.

(1) accuracy: relative error of hook scores vs one-backward-per-sample autograd, on tiny
    Llama / Qwen2 / GPT-2 models and on the default SmolLM2-135M-Instruct;
(2) speed on the default model on CPU: hook scoring at batch 16 vs a per-sample backward
    loop at batch 1 (what LESS does), samples/s, the ratio, and peak memory (each method
    runs in its own subprocess; peak RSS above the loaded model).

    .venv/bin/python bench/bench_gradients.py            # ~5 min on 2 quiet CPU cores
    .venv/bin/python bench/bench_gradients.py --quick    # ~1 min

Real text from ../shared/data/t0 (prompt/completion, <|endoftext|> stripped).
Writes bench/results/gradients.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curator.records import Sample  # noqa: E402
from curator.scoring import gradients as gr  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "t0"
if not DATA.exists():
    DATA = Path("/work/shared/data/t0")


def t0_samples(n: int, seed: int = 0) -> list[Sample]:
    """n prompt/completion pairs drawn across the t0 template files."""
    rows = []
    for f in sorted(DATA.glob("*.jsonl")):
        with f.open() as fh:
            for line in fh:
                r = json.loads(line)
                rows.append((r["prompt"].strip(), r["completion"].replace("<|endoftext|>", "")
                             .strip(), f.stem))
    rng = random.Random(seed)
    rng.shuffle(rows)
    out, seen = [], set()
    for p, c, task in rows:
        if not c or (p, c) in seen:
            continue
        seen.add((p, c))
        out.append(Sample.from_pair(p, c, {"task": task}))
        if len(out) == n:
            break
    return out


def random_u(lm, scope, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g).to(lm.device)
            for n, p in gr.scope_parameters(lm.model, scope).items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def accuracy(n_tiny: int, n_default: int, max_length: int) -> list[str]:
    from curator.models import load_model
    from curator.testing import ARCHITECTURES, tiny_loaded_model

    lines = ["| model | dtype | direction | samples | max rel. error (total) | "
             "max rel. error (per layer) |", "|---|---|---|---|---|---|"]
    samples = t0_samples(max(n_tiny, n_default), seed=1)
    for arch in ARCHITECTURES:
        lm = tiny_loaded_model(arch)
        scope = gr.resolve_scope(lm.model)
        pool, targets = samples[:n_tiny], samples[n_tiny:n_tiny + 4] or samples[:4]
        stats = gr.gradient_statistics(lm, pool, targets, scope=scope, max_length=max_length)
        for label, u in (("random", random_u(lm, scope)),
                         ("DualSFT u", gr.update_direction(stats, eta=1e-2))):
            h = gr.hook_scores(lm, pool, u, scope, batch_size=8, max_length=max_length)
            e = gr.exact_scores(lm, pool, u, scope, max_length=max_length)
            lines.append(f"| tiny {arch} | fp32 | {label} | {n_tiny} | "
                         f"{rel_err(h.total, e.total):.1e} | "
                         f"{rel_err(h.per_layer()[1], e.per_layer()[1]):.1e} |")
        print(lines[-1], flush=True)
    lm = load_model(None, device="cpu", dtype="fp32")
    scope = gr.resolve_scope(lm.model)
    pool = samples[:n_default]
    u = random_u(lm, scope)
    h = gr.hook_scores(lm, pool, u, scope, batch_size=8, max_length=max_length)
    e = gr.exact_scores(lm, pool, u, scope, max_length=max_length)
    lines.append(f"| SmolLM2-135M (all linear) | fp32 | random | {n_default} | "
                 f"{rel_err(h.total, e.total):.1e} | "
                 f"{rel_err(h.per_layer()[1], e.per_layer()[1]):.1e} |")
    print(lines[-1], flush=True)
    lm16 = load_model(None, device="cpu", dtype="bf16")
    h16 = gr.hook_scores(lm16, pool, u, scope=gr.resolve_scope(lm16.model), batch_size=8,
                         max_length=max_length)
    lines.append(f"| SmolLM2-135M, hook in bf16 vs exact fp32 | bf16 | random | {n_default} | "
                 f"{rel_err(h16.total, e.total):.1e} (Spearman {spearman(h16.total, e.total):.3f})"
                 " | - |")
    print(lines[-1], flush=True)
    return lines


def worker(method: str, n: int, batch_size: int, max_length: int, dtype: str) -> dict:
    """Run one scoring method in this process; report time and peak RSS above the model."""
    from curator.models import load_model

    torch.manual_seed(0)
    lm = load_model(None, device="cpu", dtype=dtype)
    scope = gr.resolve_scope(lm.model)
    u = random_u(lm, scope)
    pool = t0_samples(n, seed=2)
    warm = t0_samples(2, seed=3)
    # warm-up: first-call allocations and kernel selection out of the timing
    if method == "hook":
        gr.hook_scores(lm, warm, u, scope, batch_size=2, max_length=max_length)
    else:
        gr.exact_scores(lm, warm, u, scope, max_length=max_length)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if method == "hook":
        s = gr.hook_scores(lm, pool, u, scope, batch_size=batch_size, max_length=max_length)
    else:
        s = gr.exact_scores(lm, pool, u, scope, max_length=max_length)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    enc = gr.encode_samples(lm.tokenizer, pool, max_length)
    tokens = sum(len(e.input_ids) for e in enc if e is not None)
    return {"method": method, "n": n, "seconds": dt, "samples_per_s": n / dt,
            "tokens": tokens, "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024,
            "dtype": str(lm.dtype).replace("torch.", ""), "n_modules": len(scope),
            "n_params": sum(p.numel() for p in gr.scope_parameters(lm.model, scope).values()),
            "threads": torch.get_num_threads(),
            "scores": [float(x) for x in s.total]}


def run_worker(method: str, n: int, batch_size: int, max_length: int, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--batch-size",
           str(batch_size), "--max-length", str(max_length), "--dtype", dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (~1 min)")
    ap.add_argument("--worker", choices=["hook", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto", help="speed runs: auto (bf16 where the CPU has it), "
                    "bf16 or fp32")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gradients.md"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.batch_size, args.max_length,
                                args.dtype)))
        return

    n_tiny, n_default = (8, 4) if args.quick else (16, 6)
    n_hook, n_loop = (16, 4) if args.quick else (64, 16)
    command = "bench/bench_gradients.py " + " ".join(sys.argv[1:])
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    acc = accuracy(n_tiny, n_default, args.max_length)
    hook = run_worker("hook", n_hook, args.batch_size, args.max_length, args.dtype)
    print("hook", {k: v for k, v in hook.items() if k != "scores"}, flush=True)
    loop = run_worker("loop", n_loop, 1, args.max_length, args.dtype)
    print("loop", {k: v for k, v in loop.items() if k != "scores"}, flush=True)
    # the loop's samples are the hook run's first n_loop: same scores up to precision
    agree = spearman(np.array(hook["scores"][:n_loop]), np.array(loop["scores"]))
    ratio = hook["samples_per_s"] / loop["samples_per_s"]

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    md = [
        "# Gradient scores: hook-based <u, g_n> vs exact per-sample autograd",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM, no GPU; "
        f"torch {torch.__version__} ({hook['threads']} threads), Python "
        f"{platform.python_version()}. The CPU was shared with other work while this ran, "
        "so timings are indicative; the lead reruns on a quiet machine. 1-minute load "
        f"average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}.",
        "",
        f"Data: {n_hook} prompt/completion pairs from `shared/data/t0` (`<|endoftext|>` "
        f"stripped), max length {args.max_length} tokens. Total wall time "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        "## Accuracy (hook scores vs one backward per sample)",
        "",
        "Scope: every linear layer (nn.Linear / GPT-2 Conv1D) except the LM head. Hook batches "
        "of 8 carry right padding; the exact path runs each sample alone. Relative error = "
        "max |hook - exact| / max |exact|.",
        "",
        *acc,
        "",
        "## Speed on the default model (SmolLM2-135M-Instruct, CPU)",
        "",
        f"Scope: all {hook['n_modules']} linear layers ({hook['n_params'] / 1e6:.1f}M "
        "parameters). Per-sample loop = forward + full backward + <u, g_n> per sample at "
        "batch 1 (LESS's way). Peak RSS: each method in its own process; 'extra' is the peak "
        "above what the process held after loading the model and one warm-up call.",
        "",
        "| method | dtype | batch | samples | tokens | seconds | samples/s | peak RSS (MiB) | "
        "extra peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| hooks, one batched backward | {hook['dtype']} | {args.batch_size} | {hook['n']} | "
        f"{hook['tokens']} | {hook['seconds']:.1f} | {hook['samples_per_s']:.2f} | "
        f"{hook['peak_rss_mib']:.0f} | {hook['extra_rss_mib']:.0f} |",
        f"| per-sample backward loop | {loop['dtype']} | 1 | {loop['n']} | {loop['tokens']} | "
        f"{loop['seconds']:.1f} | {loop['samples_per_s']:.2f} | {loop['peak_rss_mib']:.0f} | "
        f"{loop['extra_rss_mib']:.0f} |",
        "",
        f"Speed-up (samples/s, hooks / loop): **{ratio:.1f}x**. Spearman correlation of the "
        f"two methods' scores on the shared {n_loop} samples: {agree:.4f} "
        "(both in the speed-run dtype).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
