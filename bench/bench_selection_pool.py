"""What storing a selection's pool costs (migration 8): seconds to save a selection with and
without its pool, store growth, and seconds to read the pool back, at a given pool size.

    .venv/bin/python bench/bench_selection_pool.py --pool 200000 --selected 1000

Sample ids are random 32-hex strings like the store's (the table has no key on samples,
so no samples need to exist). Members are few by default: they are written row by row
(``executemany``) with or without a pool, and only the difference is measured. Each save is its own transaction on a fresh store file,
checkpointed before the size is read. The load average is printed with the times.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path

from curator.store import Store
from curator.store.selection_rows import SelectionRecord, save_selection, selection_pool_ids


def _size(store: Store) -> int:
    with store.atomic() as con:
        con.execute("CHECKPOINT")
    return sum(p.stat().st_size for p in store.path.iterdir() if p.is_file())


def measure(n_pool: int, n_selected: int, repeat: int) -> dict[str, float]:
    ids = [secrets.token_hex(16) for _ in range(n_pool)]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pool in (("without", None), ("with", ids)):
            store = Store(Path(tmp) / label)
            store.init()
            base = _size(store)
            times = []
            for _ in range(repeat):
                rec = SelectionRecord(dataset="d", version=1, stage="instruction",
                                      method="random", budget=str(n_selected), n_pool=n_pool,
                                      n_selected=n_selected)
                t0 = time.perf_counter()
                save_selection(store, rec, ids[:n_selected], gains=[0.0] * n_selected,
                               pool=pool)
                times.append(time.perf_counter() - t0)
            out[f"save_s_{label}"] = min(times)
            out[f"bytes_per_selection_{label}"] = (_size(store) - base) / repeat
            if pool is not None:
                t0 = time.perf_counter()
                got = selection_pool_ids(store, rec.selection_id)
                out["read_pool_s"] = time.perf_counter() - t0
                assert len(got) == n_pool
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=200_000)
    ap.add_argument("--selected", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    res = measure(args.pool, args.selected, args.repeat)
    print(f"pool {args.pool:,}, selected {args.selected:,}, best of {args.repeat}, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"save without pool {res['save_s_without']:.3f} s, with pool "
          f"{res['save_s_with']:.3f} s (+{res['save_s_with'] - res['save_s_without']:.3f} s)")
    print(f"store growth per selection: without pool "
          f"{res['bytes_per_selection_without'] / 2**20:.1f} MiB, with pool "
          f"{res['bytes_per_selection_with'] / 2**20:.1f} MiB")
    print(f"read the pool back: {res['read_pool_s']:.3f} s")


if __name__ == "__main__":
    main()
