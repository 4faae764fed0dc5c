"""Benchmark: hook-based per-sample gradient scores <u, g_n> against exact per-sample autograd.

(1) accuracy: relative error of hook scores vs one-backward-per-sample autograd, on tiny
    Llama / Qwen2 / GPT-2 models and on the default SmolLM2-135M-Instruct;
(2) speed on the default model on CPU: hook scoring at batch 16 vs a per-sample backward
    loop at batch 1 (what LESS does), samples/s, the ratio, and peak memory (each method
    runs in its own subprocess; peak RSS above the loaded model); wall and CPU seconds and
    the load average before each run, since the machine is shared; by default once with
    torch's default threads (the headline) and once with one thread;
(3) where the work goes: FLOPs per real token (torch's FlopCounterMode) of the forward,
    the activation-only backward and the hooks' contraction, against the loop's forward +
    full backward, and the rate each method reached.

    .venv/bin/python bench/bench_gradients.py            # ~7 min on 2 quiet CPU cores
    .venv/bin/python bench/bench_gradients.py --quick    # ~3 min
    .venv/bin/python bench/bench_gradients.py --threads 2  # one pair of speed runs
    python bench/bench_gradients.py --device cuda --threads 0 [--model PATH]  # on a GPU

With --device cuda everything runs there (the accuracy models too); timed regions end with
a device synchronisation, and peak memory is the GPU's (torch.cuda.max_memory_allocated).

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
if os.environ.get("CURATOR_BENCH_DATA"):  # the GPU machine: a copy carried with the repository
    DATA = Path(os.environ["CURATOR_BENCH_DATA"])


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host timer read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def accuracy(n_tiny: int, n_default: int, max_length: int, device: str = "cpu",
             model: str | None = None) -> list[str]:
    from curator.models import load_model, wrap_model
    from curator.testing import ARCHITECTURES, tiny_loaded_model

    lines = ["| model | dtype | direction | samples | max rel. error (total) | "
             "max rel. error (per layer) |", "|---|---|---|---|---|---|"]
    samples = t0_samples(max(n_tiny, n_default), seed=1)
    for arch in ARCHITECTURES:
        lm = tiny_loaded_model(arch)
        if device != "cpu":
            lm = wrap_model(lm.model, lm.tokenizer, name=lm.name, device=device, dtype="fp32")
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
    lm = load_model(model, device=device, dtype="fp32")
    scope = gr.resolve_scope(lm.model)
    pool = samples[:n_default]
    u = random_u(lm, scope)
    h = gr.hook_scores(lm, pool, u, scope, batch_size=8, max_length=max_length)
    e = gr.exact_scores(lm, pool, u, scope, max_length=max_length)
    name = "SmolLM2-135M" if model is None else Path(model).name
    lines.append(f"| {name} (all linear) | fp32 | random | {n_default} | "
                 f"{rel_err(h.total, e.total):.1e} | "
                 f"{rel_err(h.per_layer()[1], e.per_layer()[1]):.1e} |")
    print(lines[-1], flush=True)
    lm16 = load_model(model, device=device, dtype="bf16")
    h16 = gr.hook_scores(lm16, pool, u, scope=gr.resolve_scope(lm16.model), batch_size=8,
                         max_length=max_length)
    lines.append(f"| {name}, hook in bf16 vs exact fp32 | bf16 | random | {n_default} | "
                 f"{rel_err(h16.total, e.total):.1e} (Spearman {spearman(h16.total, e.total):.3f})"
                 " | - |")
    print(lines[-1], flush=True)
    return lines


def gemm_rate(dtype: torch.dtype, seconds: float = 2.0,
              device: torch.device | str = "cpu") -> float:
    """GFLOP/s of a matmul shaped like the hook path's big ones (a batch of 16 x 66 tokens
    through an MLP projection, 576 x 1536), in this process's threads and dtype."""
    device = torch.device(device)
    a = torch.randn(1056, 576, dtype=dtype, device=device)
    b = torch.randn(576, 1536, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(10 if device.type == "cuda" else 1):  # launches queue: sync per 10
            a @ b
            reps += 1
        sync(device)
    return 2 * 1056 * 576 * 1536 * reps / (time.perf_counter() - t) / 1e9


def worker(method: str, n: int, batch_size: int, max_length: int, dtype: str,
           threads: int = 0, device: str = "cpu", model: str | None = None) -> dict:
    """Run one scoring method in this process; report time and peak RSS above the model
    (on CUDA: peak GPU memory allocated above the model)."""
    from curator.models import load_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    lm = load_model(model, device=device, dtype=dtype)
    cuda = lm.device.type == "cuda"
    scope = gr.resolve_scope(lm.model)
    u = random_u(lm, scope)
    pool = t0_samples(n, seed=2)
    warm = t0_samples(2, seed=3)
    # warm-up: first-call allocations and kernel selection out of the timing
    if method == "hook":
        gr.hook_scores(lm, warm, u, scope, batch_size=2, max_length=max_length)
    else:
        gr.exact_scores(lm, warm, u, scope, max_length=max_length)
    rate = gemm_rate(lm.dtype, device=lm.device) if method == "hook" else None
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    base = r0.ru_maxrss
    if cuda:  # KiB, as ru_maxrss
        sync(lm.device)
        torch.cuda.reset_peak_memory_stats(lm.device)
        base = torch.cuda.memory_allocated(lm.device) / 1024
    t = time.perf_counter()
    if method == "hook":
        s = gr.hook_scores(lm, pool, u, scope, batch_size=batch_size, max_length=max_length)
    else:
        s = gr.exact_scores(lm, pool, u, scope, max_length=max_length)
    sync(lm.device)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    peak = torch.cuda.max_memory_allocated(lm.device) / 1024 if cuda else r1.ru_maxrss
    enc = gr.encode_samples(lm.tokenizer, pool, max_length)
    tokens = sum(len(e.input_ids) for e in enc if e is not None)
    return {"method": method, "n": n, "seconds": dt, "samples_per_s": n / dt,
            "cpu_seconds": cpu, "load_before": load, "gemm_gflops": rate,
            "tokens": tokens, "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024,
            "dtype": str(lm.dtype).replace("torch.", ""), "n_modules": len(scope),
            "n_params": sum(p.numel() for p in gr.scope_parameters(lm.model, scope).values()),
            "threads": torch.get_num_threads(), "device": str(lm.device),
            "scores": [float(x) for x in s.total]}


def run_worker(method: str, n: int, batch_size: int, max_length: int, dtype: str,
               threads: int, device: str = "cpu", model: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--batch-size",
           str(batch_size), "--max-length", str(max_length), "--dtype", dtype,
           "--threads", str(threads), "--device", device, "--data", str(DATA)]
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def flop_split(n: int, batch_size: int, max_length: int, dtype: str, device: str = "cpu",
               model: str | None = None) -> dict:
    """FLOPs per real (unpadded) token on the speed run's first n samples, counted by
    torch's FlopCounterMode (matmuls and attention): the hook path's forward, its
    activation-only backward and its contraction, batched as hook_scores batches them;
    and the loop's forward + full backward at batch 1. Not timed."""
    from torch.utils.flop_counter import FlopCounterMode

    from curator.models import load_model
    from curator.scoring.encoding import collate

    lm = load_model(model, device=device, dtype=dtype)
    model = lm.model
    scope = gr.resolve_scope(model)
    u = random_u(lm, scope)
    pool = t0_samples(n, seed=2)
    enc = gr.encode_samples(lm.tokenizer, pool, max_length)
    lengths = [len(e.input_ids) for e in enc]
    batches = [collate([enc[i] for i in g], gr._pad_id(lm.tokenizer), lm.device)
               for g in gr.padding_aware_batches(lengths, batch_size)]

    def count(f) -> float:
        fc = FlopCounterMode(display=False)
        with fc:
            f()
        return float(fc.get_total_flops())

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                gr.response_losses(model, b)

    def forward_backward() -> None:
        with gr.only_grad(model, []), gr._leaf_input_embeddings(model):
            for b in batches:
                gr.response_losses(model, b).sum().backward()

    fwd = count(forward)
    fwd_bwd = count(forward_backward)
    hook = count(lambda: gr.hook_scores(lm, pool, u, scope, batch_size, max_length))
    loop = count(lambda: gr.exact_scores(lm, pool, u, scope, max_length=max_length))
    n_params = sum(p.numel() for p in gr.scope_parameters(model, scope).values())
    tokens = sum(lengths)
    padded = sum(b["input_ids"].numel() for b in batches)
    return {"n": n, "tokens": tokens, "padding": 1 - tokens / padded,
            "forward": fwd / tokens, "backward_act": (fwd_bwd - fwd) / tokens,
            "contraction": (hook - fwd_bwd) / tokens, "hook": hook / tokens,
            "loop": loop / tokens, "loop_dot": 2 * n_params * n / tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (~2 min)")
    ap.add_argument("--worker", choices=["hook", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto", help="speed runs: auto (bf16 where the CPU has it), "
                    "bf16 or fp32")
    ap.add_argument("--threads", default="0,1",
                    help="torch threads of the speed runs, comma-separated, one hook + loop "
                    "pair each (0: torch's default); the first is the headline")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--model", default=None,
                    help="a model folder or name (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--data", default=None, help="folder of T0 *.jsonl files")
    ap.add_argument("--sizes", default=None,
                    help="n_tiny,n_default,n_hook,n_loop (default 16,6,64,16; quick 8,4,16,4)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gradients.md"))
    args = ap.parse_args()
    global DATA
    if args.data:
        DATA = Path(args.data)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.batch_size, args.max_length,
                                args.dtype, int(args.threads), args.device, args.model)))
        return

    n_tiny, n_default = (8, 4) if args.quick else (16, 6)
    n_hook, n_loop = (16, 4) if args.quick else (64, 16)
    if args.sizes:
        n_tiny, n_default, n_hook, n_loop = (int(x) for x in args.sizes.split(","))
    command = "bench/bench_gradients.py " + " ".join(sys.argv[1:])
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    acc = accuracy(n_tiny, n_default, args.max_length, args.device, args.model)
    runs = []  # (hook, loop) per thread setting, one process at a time
    for threads in [int(t) for t in args.threads.split(",")]:
        hook = run_worker("hook", n_hook, args.batch_size, args.max_length, args.dtype, threads,
                          args.device, args.model)
        print("hook", {k: v for k, v in hook.items() if k != "scores"}, flush=True)
        loop = run_worker("loop", n_loop, 1, args.max_length, args.dtype, threads, args.device,
                          args.model)
        print("loop", {k: v for k, v in loop.items() if k != "scores"}, flush=True)
        runs.append((hook, loop))
    hook, loop = runs[0]
    fl = flop_split(n_loop, args.batch_size, args.max_length, hook["dtype"], args.device,
                    args.model)
    print("flops per token", fl, flush=True)

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rows, ratios, rates = [], [], []
    for hook, loop in runs:
        th = hook["threads"]
        for label, r, batch in (("hooks, one batched backward", hook, args.batch_size),
                                ("per-sample backward loop", loop, 1)):
            rows.append(
                f"| {label} | {th} | {r['dtype']} | {batch} | {r['n']} | {r['tokens']} | "
                f"{r['load_before']:.1f} | {r['seconds']:.1f} | {r['samples_per_s']:.2f} | "
                f"{r['cpu_seconds'] / r['n']:.3f} | {r['peak_rss_mib']:.0f} | "
                f"{r['extra_rss_mib']:.0f} |")
        ratio = hook["samples_per_s"] / loop["samples_per_s"]
        # the loop's samples are the hook run's first n_loop: same scores up to precision
        agree = spearman(np.array(hook["scores"][:n_loop]), np.array(loop["scores"]))
        ratios.append(f"**{ratio:.1f}x** with {th} thread{'s' if th > 1 else ''} (Spearman "
                      f"correlation of the two methods' scores on the shared {n_loop} "
                      f"samples: {agree:.4f})")
        # rate each method reached: its FLOPs per real token (counted on the loop's samples)
        # times the tokens it processed, over its wall seconds; and the hook path's FLOPs
        # alone at the rate of a lone matmul, whose time bounds what removing all else
        # could give
        rate_hook = fl["hook"] * hook["tokens"] / hook["seconds"] / 1e9
        rate_loop = fl["loop"] * loop["tokens"] / loop["seconds"] / 1e9
        floor = fl["hook"] * hook["tokens"] / hook["n"] / (hook["gemm_gflops"] * 1e9)
        ceiling = (loop["seconds"] / loop["n"]) / floor
        rates.append(
            f"| {th} | {rate_hook:.0f} | {rate_loop:.0f} | {hook['gemm_gflops']:.0f} | "
            f"{hook['seconds'] / hook['n']:.3f} | {floor:.3f} | "
            f"{loop['seconds'] / loop['n']:.3f} | {ceiling:.1f}x |")
    hook, loop = runs[0]
    on_gpu = hook["device"].startswith("cuda")
    gpu = f"GPU {torch.cuda.get_device_name(hook['device'])}" if on_gpu else "no GPU"
    where = "CUDA" if on_gpu else "CPU"
    mem_label = "peak GPU memory allocated" if on_gpu else "peak RSS"
    model_label = ("SmolLM2-135M-Instruct" if args.model is None else Path(args.model).name)
    md = [
        "# Gradient scores: hook-based <u, g_n> vs exact per-sample autograd",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM, {gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}. The CPU was shared "
        "with other work while this ran (load averages below), so timings are indicative. "
        f"1-minute load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}.",
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
        f"## Speed on the default model ({model_label}, {where})",
        "",
        f"Scope: all {hook['n_modules']} linear layers ({hook['n_params'] / 1e6:.1f}M "
        "parameters). Per-sample loop = forward + full backward + <u, g_n> per sample at "
        "batch 1 (LESS's way). Both use the same loss code (output head on response "
        "positions only; on CPU, fp32 short-row attention). Each run in its own process, one "
        f"at a time; 'load' is the 1-minute load average just before it. {mem_label}: 'extra' "
        "is the peak above what the process held after loading the model and one warm-up call. "
        "CPU s / sample counts all threads, spin-waiting included (with 2 threads on a busy "
        "machine that inflates it, most for the loop's many small operations).",
        "",
        "| method | threads | dtype | batch | samples | tokens | load | seconds | samples/s | "
        f"CPU s / sample | {mem_label} (MiB) | extra {mem_label} (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Speed-up (samples/s, hooks / loop): " + "; ".join(ratios) + ".",
        "",
        "## Where the work goes",
        "",
        f"FLOPs per real token (torch FlopCounterMode: matmuls and attention; counted on the "
        f"{fl['n']} loop samples, {fl['tokens']} tokens; the hook path batched as hook_scores "
        f"batches them, {fl['padding']:.0%} padding):",
        "",
        "| pass | GFLOP / token |",
        "|---|---|",
        f"| hooks: forward (head on response positions only) | {fl['forward'] / 1e9:.3f} |",
        f"| hooks: backward, activation gradients only | {fl['backward_act'] / 1e9:.3f} |",
        f"| hooks: contraction, one projection matmul per module | "
        f"{fl['contraction'] / 1e9:.3f} |",
        f"| **hooks: total** | **{fl['hook'] / 1e9:.3f}** |",
        f"| **loop: forward + full backward (activation and weight gradients)** | "
        f"**{fl['loop'] / 1e9:.3f}** |",
        f"| loop: per-sample <u, g_n> dot products (not in the count above) | "
        f"{fl['loop_dot'] / 1e9:.4f} |",
        "",
        "Rates: each method's FLOPs per token x the tokens it processed / its wall seconds; "
        f"'lone matmul' is a {hook['dtype']} 1056 x 576 x 1536 matmul (the shape of the hook "
        "path's big ones) timed in the hook run's process just before it. 'Matmul floor' is "
        "the hook path's FLOPs per sample at that rate; the loop's seconds per sample over it "
        "is the most any removal of the hook path's other costs could give.",
        "",
        "| threads | hooks GFLOP/s | loop GFLOP/s | lone matmul GFLOP/s | hooks s / sample | "
        "matmul floor s / sample | loop s / sample | ceiling on the speed-up |",
        "|---|---|---|---|---|---|---|---|",
        *rates,
        "",
        "Both methods do the same matmul work per token: the hook path never forms a weight "
        "gradient, but its contraction `sum_t delta_t^T U a_t` costs one projection of every "
        "token through every module (`a @ U^T` or `delta @ U`), exactly the FLOPs of the "
        "weight gradient `delta^T a` it replaces. For a general direction U no exact method "
        "does less: each of the T tokens has to meet all of U. The speed-up therefore comes "
        "only from the rate: large batched matmuls against batch-1 ones, and no "
        "parameter-sized gradient written, converted to fp32 and read back per sample. A "
        "GPU, where batch-1 matmuls use a small fraction of the device, gains far more from "
        "batching than a CPU does" + (" (this run: the table above)." if on_gpu
                                        else " (not measured here)."),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
