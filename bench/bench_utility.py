"""Throughput of the pairwise utility engine on the default model (CPU, or --device cuda).

Real text (T0 prompts and completions from ../shared/data/t0), samples chosen so a pair
(example + target, chat template) is about 160 tokens; candidate pairs from the model's own
embedding kNN graph (pool x pool, k neighbours), as in a real run. Measured:

- raw: the whole causal LM's batched forward over the same full pair sequences, model dtype
  (bf16 where the CPU has it): the ceiling in tokens/s;
- engine: ``score_pairs`` with prefix reuse (and without, on the raw subset);
- naive: fp32 model, ``score_pairs_reference`` (one pair per forward, no cache).

"effective tokens/s" counts every pair's full sequence (what the naive loop computes);
"computed tokens/s" counts what the engine actually runs (each prefix once, suffixes, d(i)).

    python bench/bench_utility.py [--quick] [--out bench/results/utility.md]
    python bench/bench_utility.py --device cuda [--model PATH]   # bf16 on a GPU

On CUDA every timed region ends with a device synchronisation (kernels run asynchronously).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402  (bench/ helper, beside this script)

from curator.models import load_model  # noqa: E402
from curator.records import Sample  # noqa: E402
from curator.scoring.embeddings import embed_samples  # noqa: E402
from curator.scoring.neighbours import neighbour_pairs, pool_neighbours  # noqa: E402
from curator.scoring.templates import PairTemplate  # noqa: E402
from curator.scoring.utility import (  # noqa: E402
    PairChunk,
    UtilityConfig,
    score_pairs,
    score_pairs_reference,
)

# The T0 sample data; CURATOR_BENCH_DATA or --data points elsewhere (the GPU machine gets
# a copy carried beside the repository, see bench/gpu_check.sh).
DATA = Path(os.environ.get("CURATOR_BENCH_DATA") or ROOT.parent / "shared" / "data" / "t0")


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host timer read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"


def load_samples(tpl: PairTemplate, n: int, lo: int, hi: int, seed: int,
                 data: Path = DATA) -> list[Sample]:
    """n T0 samples whose target layout is lo..hi tokens, spread over the template files."""
    rng = np.random.default_rng(seed)
    files = sorted(glob.glob(str(Path(data) / "*.jsonl")))
    if not files:
        raise SystemExit(f"no *.jsonl files in {data} (set --data or CURATOR_BENCH_DATA)")
    per_file: list[list[Sample]] = []
    for f in files:
        rows = [json.loads(line) for line in open(f, encoding="utf-8")]
        rng.shuffle(rows)
        ok = []
        for r in rows[:40]:
            completion = r["completion"].replace("<|endoftext|>", "").strip()
            s = Sample.from_pair(r["prompt"].strip(), completion)
            if lo <= tpl.target(s).n_tokens <= hi and s.response:
                ok.append(s)
        per_file.append(ok)
    out: list[Sample] = []
    seen: set[str] = set()
    while len(out) < n and any(per_file):
        for ok in per_file:
            if ok and len(out) < n:
                s = ok.pop()
                if s.sample_id not in seen:
                    seen.add(s.sample_id)
                    out.append(s)
    return out


def full_sequences(tpl: PairTemplate, by: dict[str, Sample], pairs, max_length: int):
    seqs = []
    for t, e in pairs:
        p = tpl.target(by[t])
        ex = tpl.example(by[e])[-(max_length - p.n_tokens):]
        seqs.append(p.head + ex + p.turns + p.response)
    return seqs


def raw_forward(lm, seqs, batch_size: int) -> float:
    """Seconds for the whole causal LM over the sequences, length-sorted right-padded batches."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    pad = lm.tokenizer.pad_token_id
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[s:s + batch_size]]
            width = max(len(x) for x in batch)
            ids = torch.full((len(batch), width), pad)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, x in enumerate(batch):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            sync(lm.device)
            t0 = time.perf_counter()
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
            sync(lm.device)
            total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    ap.add_argument("--n", type=int, default=None, help="pool size (default 40, quick 16)")
    ap.add_argument("--k", type=int, default=None,
                    help="neighbours per sample (default 16, the scoring default; quick 6)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-pairs", type=int, default=256, help="pairs per committed chunk")
    ap.add_argument("--subset", type=int, default=None,
                    help="pairs for the raw / no-reuse / naive comparisons (default 32, quick 12)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="",
                    help="a sentence for the report about the machine's state (e.g. its load)")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when present), cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="the engine's model dtype (auto: bf16 where the CPU or GPU has it)")
    ap.add_argument("--model", default=None,
                    help="a model folder or name (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--data", default=str(DATA), help="folder of T0 *.jsonl files")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "utility.md"))
    args = ap.parse_args()
    n = args.n or (16 if args.quick else 40)
    k = args.k or (6 if args.quick else 16)
    subset = args.subset or (12 if args.quick else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    load_start = os.getloadavg()[0]

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    cfg = UtilityConfig(distance="prob-l2").resolved(lm)
    tpl = PairTemplate(lm.tokenizer, cfg.template)
    samples = load_samples(tpl, n, 70, 100, args.seed, Path(args.data))
    by = {s.sample_id: s for s in samples}
    ids = [s.sample_id for s in samples]

    t0 = time.perf_counter()
    emb = embed_samples(lm, samples, batch_size=args.batch_size)
    t_embed = time.perf_counter() - t0
    nb = pool_neighbours(emb, k)
    pairs = neighbour_pairs(ids, ids, nb)
    seqs = full_sequences(tpl, by, pairs, cfg.max_length)
    lengths = np.array([len(s) for s in seqs])

    # Engine, prefix reuse, all pairs.
    sync(lm.device)
    t0 = time.perf_counter()
    chunks = list(score_pairs(lm, by, pairs, cfg, batch_size=args.batch_size,
                              chunk_pairs=args.chunk_pairs))
    sync(lm.device)
    t_engine = time.perf_counter() - t0
    got = PairChunk.concat(chunks)

    # Engine without prefix reuse, all pairs: the path the engine would take if reuse did
    # not pay (issue 25 asked for the choice per dtype; it is measured here, not assumed).
    sync(lm.device)
    t0 = time.perf_counter()
    list(score_pairs(lm, by, pairs, cfg, batch_size=args.batch_size, prefix_reuse=False,
                     chunk_pairs=args.chunk_pairs))
    sync(lm.device)
    t_engine_noreuse = time.perf_counter() - t0
    prefixes = {tpl.target(by[t]).head + tpl.example(by[e]) for t, e in pairs}
    suffixes = sum(len(tpl.target(by[t]).turns) + len(tpl.target(by[t]).response)
                   for t, _ in pairs)
    targets = sum(tpl.target(by[t]).n_tokens for t in set(ids))
    computed = sum(len(p) for p in prefixes) + suffixes + targets

    # Comparisons on a subset: the pairs of the first targets (so d(i) is shared as in a run).
    sub = pairs[:subset]
    sub_seqs = seqs[:subset]
    sub_tokens = int(sum(len(s) for s in sub_seqs))
    raw_forward(lm, sub_seqs[: args.batch_size], args.batch_size)  # warm-up
    t_raw = raw_forward(lm, sub_seqs, args.batch_size)
    sync(lm.device)
    t0 = time.perf_counter()
    list(score_pairs(lm, by, sub, cfg, batch_size=args.batch_size, prefix_reuse=False,
                     chunk_pairs=args.chunk_pairs))
    sync(lm.device)
    t_noreuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(score_pairs(lm, by, sub, cfg, batch_size=args.batch_size, chunk_pairs=args.chunk_pairs))
    sync(lm.device)
    t_reuse_sub = time.perf_counter() - t0
    bf16_sub = PairChunk.concat(list(score_pairs(lm, by, sub, cfg))).as_dict()

    lm32 = load_model(args.model, device=args.device, dtype="fp32")
    cfg32 = UtilityConfig(distance="prob-l2").resolved(lm32)
    sync(lm32.device)
    t0 = time.perf_counter()
    naive = score_pairs_reference(lm32, by, sub, cfg32)
    sync(lm32.device)
    t_naive = time.perf_counter() - t0
    diff = np.array([bf16_sub[p] - u for p, u in naive.as_dict().items()])
    corr = float(np.corrcoef([bf16_sub[p] for p in sub], naive.utility)[0, 1])
    load_end = os.getloadavg()[0]

    raw_tps = sub_tokens / t_raw
    eng_pps = len(pairs) / t_engine
    eng_eff_tps = lengths.sum() / t_engine
    eng_comp_tps = computed / t_engine
    naive_pps = len(sub) / t_naive
    rows = [
        ("raw forward, whole LM, batched, " + str(lm.dtype).removeprefix("torch."),
         f"{len(sub)} seqs", f"{t_raw:.1f}", "-", f"{raw_tps:.0f}", "-"),
        ("engine, prefix reuse (all pairs)", f"{len(pairs)} pairs", f"{t_engine:.1f}",
         f"{eng_pps:.2f}", f"{eng_eff_tps:.0f}", f"{eng_comp_tps:.0f}"),
        ("engine, no prefix reuse (all pairs)", f"{len(pairs)} pairs", f"{t_engine_noreuse:.1f}",
         f"{len(pairs) / t_engine_noreuse:.2f}", f"{lengths.sum() / t_engine_noreuse:.0f}", "-"),
        ("engine, prefix reuse (subset)", f"{len(sub)} pairs", f"{t_reuse_sub:.1f}",
         f"{len(sub) / t_reuse_sub:.2f}", f"{sub_tokens / t_reuse_sub:.0f}", "-"),
        ("engine, no prefix reuse (subset)", f"{len(sub)} pairs", f"{t_noreuse:.1f}",
         f"{len(sub) / t_noreuse:.2f}", f"{sub_tokens / t_noreuse:.0f}", "-"),
        ("naive fp32 loop, one pair per forward (subset)", f"{len(sub)} pairs", f"{t_naive:.1f}",
         f"{naive_pps:.2f}", f"{sub_tokens / t_naive:.0f}", "-"),
    ]
    lines = [
        "# Pairwise utility throughput", "",
        f"Command: `{command}`", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {device_name(lm.device)}, "
        f"torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, model {lm.name} ({lm.dtype}, {lm.device}). "
        f"Load average (1 min) {load_start:.1f} at start, {load_end:.1f} at end"
        + (f". {args.note}" if args.note else "") + " Ratios between rows taken in the same "
        "run are the more reliable part on a shared machine.", "",
        f"Data: {len(samples)} T0 samples (target layout 70-100 tokens), pool x pool kNN "
        f"(k={k}, model embeddings, {nb.method}) -> {len(pairs)} pairs; full pair sequence "
        f"length mean {lengths.mean():.0f}, min {lengths.min()}, max {lengths.max()} tokens; "
        f"{len(prefixes)} distinct prefixes. Batch size {args.batch_size}. "
        f"Embedding the pool took {t_embed:.1f} s.", "",
        "| what | work | seconds | pairs/s | effective tokens/s | computed tokens/s |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows], "",
        f"- engine effective tokens/s / raw forward tokens/s: {eng_eff_tps / raw_tps:.2f} "
        f"(computed tokens/s / raw: {eng_comp_tps / raw_tps:.2f}; target >= 0.8)",
        f"- prefix reuse over no reuse, all pairs: {t_engine_noreuse / t_engine:.2f}x "
        f"the pairs/s (the engine keeps reuse on when this is >= 1)",
        f"- engine pairs/s / naive fp32 pairs/s: {eng_pps / naive_pps:.1f}x (target >= 4x)",
        f"- engine ({lm.dtype}) vs naive fp32 utilities on the subset: max |diff| "
        f"{np.abs(diff).max():.4f}, mean |diff| {np.abs(diff).mean():.4f}, Pearson r {corr:.3f}; "
        f"utility range [{naive.utility.min():.3f}, {naive.utility.max():.3f}]",
        f"- invalid pairs: {int((~got.valid).sum())} of {len(got)}", "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
