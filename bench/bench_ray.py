"""The Ray engine against the local engine on this machine, on the same candidate pairs.

Local: ``score_pairs`` in this process with ``--local-threads`` torch threads (2). Ray: a
local cluster of ``--workers`` one-thread CPU actors (2), each loading the model once, fed
the same units of whole prefix groups; the driver here collects the chunks (no store: the
commits cost the same for both engines). Both compute d(i) once per target.

Reported: the largest absolute difference between the two engines' utilities (and the
share of pairs valid in one and not the other, which must be 0), the throughput ratio
(local seconds / Ray seconds, the pool already started: aim >= 0.9), the pool's start-up
(cluster, actors, model loads), and the overhead per shard: actor seconds not spent
computing, (wall x actors - compute) / shards. Also the tokens per pair of the candidate
pairs (a pair's whole sequence, and what the engine runs with each prefix once), the
numbers docs/scale.md's cost model starts from.

    python bench/bench_ray.py [--rows 48] [--k 4] [--model PATH] [--out FILE]
    python bench/bench_ray.py --tokens-only --rows 300 --k 16   # tokens per pair only
    python bench/bench_ray.py --commit-cost                     # the driver's commits only

Pairs: the kNN graph (model embeddings, exact search) of the first ``--rows`` rows of
``--data`` (default sample_data/v1.jsonl, the demo's rows), pool x pool.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_name  # noqa: E402  (bench/ helper, beside this script)

from curator.ingestion.ingest import ingest  # noqa: E402
from curator.models import load_model  # noqa: E402
from curator.scoring.engine import LOCAL  # noqa: E402
from curator.scoring.jobs import PAIR_COMMIT, candidate_pairs, ensure_embeddings  # noqa: E402
from curator.scoring.templates import PairTemplate  # noqa: E402
from curator.scoring.utility import PairChunk, UtilityConfig, _lay_out, pair_units  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.store.datasets import load_samples  # noqa: E402


def samples_of(data: Path, rows: int, work: Path) -> list:
    head = work / "rows.jsonl"
    with data.open() as src:
        head.write_text("".join(line for _, line in zip(range(rows), src, strict=False)))
    store = Store(work / "store")
    ingest(store, str(head), "bench")
    return store, load_samples(store, "bench", 1)


def tokens_per_pair(lm, samples, pairs, cfg: UtilityConfig, batch_size: int) -> dict:
    """Mean tokens of a pair's whole sequence, and of what the engine runs (each prefix
    once per unit, every suffix), over the valid pairs."""
    by_id = {s.sample_id: s for s in samples}
    tpl = PairTemplate(lm.tokenizer, cfg.template)
    laid = {p: _lay_out(tpl, by_id[p[0]], by_id[p[1]], cfg) for p in pairs}
    valid = [p for p in pairs if not laid[p].reason]
    whole = [len(laid[p].prefix) + len(laid[p].suffix) for p in valid]
    computed = 0
    for unit in pair_units(lm, by_id, valid, cfg, batch_size=batch_size,
                           chunk_pairs=PAIR_COMMIT):
        computed += sum(len(laid[p].suffix) for p in unit)
        computed += sum(len(h) + len(e) for h, e in {laid[p].key for p in unit})
    n_targets = len({t for t, _ in valid})
    response = [laid[p].n_response for p in valid]
    return {"pairs": len(pairs), "valid": len(valid), "whole": float(np.mean(whole)),
            "computed": computed / max(len(valid), 1), "targets": n_targets,
            "response": float(np.mean(response))}


# docs/scale.md's cost model: 1M rows at k = 16 with a 7B model on 8 and 64 GPUs.
COST_ROWS, COST_K, COST_PARAMS = 1_000_000, 16, 6.7e9        # Llama-2-7B
PEAK_BF16 = {"A100 SXM": 312e12, "H100 SXM": 989e12}          # dense, NVIDIA datasheets
MFU = (0.2, 0.35, 0.5)                                        # assumed; 0.35 the estimate
STORE_PAIRS_PER_S = 16_000   # driver commits of 4,096 pairs at ~258 ms (docs/scale.md)


def cost_model(t_whole: float, t_run: float) -> list[str]:
    """Hours on paper from tokens per pair (whole sequence, run with prefix reuse)."""
    pairs = COST_ROWS * COST_K
    tok_pairs = pairs * t_run
    tok_other = 2 * COST_ROWS * 0.5 * t_whole   # d(i) and embeddings: ~half a pair each
    flops_per_token = 2 * COST_PARAMS
    lines = [f"cost model: {pairs / 1e6:.0f}M pairs, {(tok_pairs + tok_other) / 1e6:.0f}M "
             f"tokens, {(tok_pairs + tok_other) * flops_per_token:.2e} FLOPs", "",
             "| GPUs | MFU | tokens/s per GPU | compute (min) | pairs/s asked of the store |"
             " with the store's limit (min) |", "|---|---:|---:|---:|---:|---:|"]
    for name, peak in PEAK_BF16.items():
        for gpus in (8, 64):
            for mfu in MFU:
                per = peak * mfu / flops_per_token
                rate = per * gpus
                compute = (tok_pairs + tok_other) / rate
                bound = max(tok_pairs / rate, pairs / STORE_PAIRS_PER_S) + tok_other / rate
                lines.append(f"| {gpus} x {name} | {mfu:.2f} | {per:,.0f} | "
                             f"{compute / 60:,.1f} | {rate / t_run:,.0f} | {bound / 60:,.1f} |")
    return lines


def commit_cost(sizes: tuple[int, ...] = (256, 4096), chunks: int = 40) -> list[str]:
    """Seconds per driver commit of ``size`` random utilities with the run's progress (what
    ``jobs._PairJob`` does per chunk), into a fresh temporary store."""
    import uuid

    from curator.store.scores import save_utilities

    rng = np.random.default_rng(0)
    lines = ["| pairs per commit | median ms | mean ms | pairs/s |", "|---:|---:|---:|---:|"]
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "store")
            run = store.start_run("score-utility", None, {"bench": True}, total=size * chunks)
            times = []
            for c in range(chunks):
                t = [uuid.uuid4().hex for _ in range(size)]
                e = [uuid.uuid4().hex for _ in range(size)]
                u = rng.random(size)
                started = time.perf_counter()
                with store.atomic():
                    save_utilities(store, "m", "c", t, e, u, u, u, np.ones(size, bool))
                    store.update_run(run, done=(c + 1) * size)
                times.append(time.perf_counter() - started)
        med = float(np.median(times))
        lines.append(f"| {size} | {med * 1000:.0f} | {np.mean(times) * 1000:.0f} | "
                     f"{size / med:,.0f} |")
    return lines


def collect(chunks) -> PairChunk:
    return PairChunk.concat(list(chunks))


def validity(chunk: PairChunk) -> dict[tuple[str, str], bool]:
    pairs = zip(chunk.target_id, chunk.example_id, strict=True)
    return dict(zip(pairs, chunk.valid.tolist(), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "sample_data" / "v1.jsonl")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-threads", type=int, default=2)
    ap.add_argument("--tokens-only", action="store_true")
    ap.add_argument("--commit-cost", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if args.commit_cost:
        print("\n".join(["# bench_ray: `python bench/bench_ray.py --commit-cost`", "",
                         f"CPU: {cpu_name()}, {os.cpu_count()} cores", "", *commit_cost()]))
        return
    torch.set_num_threads(args.local_threads)
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    cfg = UtilityConfig(max_length=args.max_length).resolved(lm)
    with tempfile.TemporaryDirectory() as tmp:
        store, samples = samples_of(args.data, args.rows, Path(tmp))
        emb, _ = ensure_embeddings(store, lm, samples, batch_size=args.batch_size)
        pairs, graph = candidate_pairs(samples, samples, emb, emb, args.k)
    by_id = {s.sample_id: s for s in samples}
    tokens = tokens_per_pair(lm, samples, pairs, cfg, args.batch_size)
    lines = [f"# bench_ray: `python {shlex.join(['bench/bench_ray.py', *sys.argv[1:]])}`", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} cores; model {lm.name} ({cfg.dtype}); "
             f"{len(samples)} rows of {args.data.name}, k={args.k} ({graph}): "
             f"{len(pairs)} pairs, {tokens['targets']} targets", "",
             f"tokens per pair: {tokens['whole']:.1f} whole sequence, "
             f"{tokens['computed']:.1f} computed with prefix reuse; response "
             f"{tokens['response']:.1f} tokens"]
    if args.tokens_only:
        lines += [""] + cost_model(tokens["whole"], tokens["computed"])
    else:
        lines += [""] + compare(lm, by_id, pairs, cfg, args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def compare(lm, by_id, pairs, cfg, args) -> list[str]:
    from curator.scoring.ray_engine import RayEngine

    # One untimed pair through each engine first: the first forward pays one-time costs
    # (kernel selection, allocator growth) that a long run would not notice.
    warm = pairs[:1]
    collect(LOCAL.pair_chunks(lm, by_id, warm, cfg, batch_size=args.batch_size,
                              chunk_pairs=PAIR_COMMIT, target_distances={}))
    started = time.perf_counter()
    local = collect(LOCAL.pair_chunks(lm, by_id, pairs, cfg, batch_size=args.batch_size,
                                      chunk_pairs=PAIR_COMMIT, target_distances={}))
    t_local = time.perf_counter() - started

    engine = RayEngine(workers=args.workers, threads=1)
    try:
        started = time.perf_counter()
        engine.actors(lm)  # cluster, actors, one model load each
        t_start = time.perf_counter() - started
        for actor in engine.pools[lm.fingerprint]:  # warm each actor the same way
            engine.in_flight, pool = 1, engine.pools[lm.fingerprint]
            engine.pools[lm.fingerprint] = [actor]
            collect(engine.pair_chunks(lm, by_id, warm, cfg, batch_size=args.batch_size,
                                       chunk_pairs=PAIR_COMMIT, target_distances={}))
            engine.pools[lm.fingerprint], engine.in_flight = pool, 2
        started = time.perf_counter()
        ray = collect(engine.pair_chunks(lm, by_id, pairs, cfg, batch_size=args.batch_size,
                                         chunk_pairs=PAIR_COMMIT, target_distances={}))
        t_ray = time.perf_counter() - started
        stats = engine.last
    finally:
        engine.close()

    want, got = local.as_dict(), ray.as_dict()
    v_local, v_ray = validity(local), validity(ray)
    assert set(want) == set(got) == set(pairs)
    both = [p for p in pairs if v_local[p] and v_ray[p]]
    diff = max((abs(want[p] - got[p]) for p in both), default=0.0)
    mismatch = sum(v_local[p] != v_ray[p] for p in pairs)
    return [
        "| engine | seconds | pairs/s |", "|---|---:|---:|",
        f"| local, {args.local_threads} threads | {t_local:.1f} | {len(pairs) / t_local:.2f} |",
        f"| ray, {args.workers} x 1-thread actors | {t_ray:.1f} | {len(pairs) / t_ray:.2f} |",
        "",
        f"throughput ratio (ray / local): {t_local / t_ray:.2f}",
        f"max abs difference of utilities: {diff:.2e} over {len(both)} valid pairs; "
        f"validity differs on {mismatch} pairs",
        f"ray pool start-up (cluster, {args.workers} actors loading the model): {t_start:.1f} s",
        f"shards: {stats.shards} (d(i) and pair units); actor compute {stats.compute_seconds:.1f}"
        f" s of {stats.wall_seconds * stats.workers:.1f} actor-seconds; overhead per shard "
        f"{stats.overhead_per_shard * 1000:.0f} ms; compute per shard "
        f"{np.mean(stats.shard_seconds) * 1000:.0f} ms (mean)",
    ]


if __name__ == "__main__":
    main()
