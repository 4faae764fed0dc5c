"""Ingest and diff benchmark: time and peak memory of `curator.ingestion.ingest.ingest` on
generated JSONL.

Targets (issue 2): ingest of 100k JSONL rows in under 20 s on 2 cores, with peak memory that
does not grow with the file (rows stream through in batches); a diff of two 100k-row
versions in under 2 s.

    .venv/bin/python bench/bench_ingest.py --rows 100000

Every ingest runs in a fresh child process, so its peak RSS (VmHWM) belongs to that ingest
alone; the parent only generates files and writes the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("data model sample prompt answer token layer budget stage utility gradient mask "
         "subset version store kernel greedy batch loss score").split()


def make_row(i: int, variant: int = 0) -> dict:
    """A deterministic alpaca row of a few hundred characters; `variant` changes its content."""
    rnd = random.Random(i * 1_000_003 + variant)
    words = lambda n: " ".join(rnd.choice(WORDS) for _ in range(n))  # noqa: E731
    return {"instruction": f"Task {i}.{variant}: {words(rnd.randint(8, 30))}?",
            "input": words(rnd.randint(0, 20)),
            "output": words(rnd.randint(20, 80)),
            "source": "bench", "row": i}


def write_jsonl(path: Path, n: int, changed_every: int = 0) -> None:
    """n rows; with changed_every=k every k-th row gets new content (the rest repeat row i)."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            variant = 1 if changed_every and i % changed_every == 0 else 0
            fh.write(json.dumps(make_row(i, variant)) + "\n")


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- child: one measured job ----------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    from curator.ingestion.ingest import ingest
    from curator.store import Store
    from curator.store.datasets import diff_versions

    store = Store(args.store)
    store.init()  # imports and the empty store are part of the baseline, not of ingest
    base = rss_mb("VmRSS")
    out: dict = {"baseline_mb": base}
    t0 = time.perf_counter()
    s = ingest(store, args.source, "bench", append=args.append, batch_size=args.batch_size)
    out.update(seconds=time.perf_counter() - t0, peak_mb=rss_mb("VmHWM"), version=s.version,
               read=s.n_read, accepted=s.n_accepted, duplicates=s.n_duplicates,
               quarantined=s.n_quarantined, added=s.n_added, removed=s.n_removed,
               unchanged=s.n_unchanged, members=s.n_members)
    if args.diff:
        old, new = args.diff.split(",")
        t0 = time.perf_counter()
        d = diff_versions(store, "bench", int(old), int(new))
        out["diff"] = {"seconds": time.perf_counter() - t0, "added": d.n_added,
                       "removed": d.n_removed, "unchanged": d.n_unchanged}
    print(json.dumps(out))


def run_child(store: Path, source: Path, batch_size: int, append: bool = False,
              diff: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--source", str(source),
           "--batch-size", str(batch_size)]
    if append:
        cmd.append("--append")
    if diff:
        cmd += ["--diff", diff]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"benchmark child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- parent ---------------------------------------------------------------------------------


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.platform()}, Python {platform.python_version()}, {cpus} CPUs"
            f"{f' ({model})' if model else ''}, load average at start {load}")


LOAD_AT_START = os.getloadavg()  # when the script started, for the results' wording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the timed versions")
    ap.add_argument("--memory-rows", default="50000,100000,200000",
                    help="file sizes whose peak memory is compared (comma separated)")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--append", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--diff", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", str(shown), *sys.argv[1:]])
    started = dt.datetime.now().astimezone()
    env = machine()
    n = args.rows
    sizes = [int(x) for x in args.memory_rows.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="curator-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"generating files in {tmp}", file=sys.stderr)
        v1 = tmp / f"v1-{n}.jsonl"
        write_jsonl(v1, n)
        v2 = tmp / f"v2-{n}.jsonl"
        write_jsonl(v2, n, changed_every=10)  # 10% of the rows changed, 90% repeated
        # Timed pipeline: v1 snapshot; v2 appended (10% new); v3 snapshot of the changed file.
        store = tmp / "store"
        r1 = run_child(store, v1, args.batch_size)
        print(f"v1: {r1}", file=sys.stderr)
        r2 = run_child(store, v2, args.batch_size, append=True, diff="1,2")
        print(f"v2: {r2}", file=sys.stderr)
        r3 = run_child(store, v2, args.batch_size, diff="1,3")
        print(f"v3: {r3}", file=sys.stderr)
        # Memory against file size: each size ingested into its own fresh store.
        memory = []
        for size in sizes:
            src = tmp / f"m-{size}.jsonl"
            write_jsonl(src, size)
            r = run_child(tmp / f"store-{size}", src, args.batch_size)
            r["rows"], r["file_mb"] = size, src.stat().st_size / 2**20
            memory.append(r)
            print(f"memory {size}: {r}", file=sys.stderr)
            src.unlink()
        db_mb = (store / "curator.duckdb").stat().st_size / 2**20
        row_bytes = v1.stat().st_size / n

    def grown(r: dict) -> float:
        return r["peak_mb"] - r["baseline_mb"]

    ingest_ok = r1["seconds"] < 20
    diff_ok = r3["diff"]["seconds"] < 2
    lines = [
        "# Ingest and diff benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env}  ",
        f"Date: {started:%Y-%m-%d %H:%M %Z}  ",
        ("Other work (tests, other benchmarks) shared these cores while it ran, so times "
         "are upper bounds for an idle machine." if LOAD_AT_START[0] >= 1.5 else
         "Nothing else heavy was running (a 1-minute load average under 1.5 at the start)."),
        "",
        f"Rows are generated alpaca records (instruction/input/output plus two metadata "
        f"fields, {row_bytes:.0f} bytes each on average); batch size {args.batch_size}; every "
        "ingest runs in a fresh process.",
        "",
        "## Time",
        "",
        "| step | rows read | accepted | members | added | removed | unchanged | seconds | "
        "rows/s | peak - baseline MiB | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| ingest v1 (snapshot, fresh store) | {r1['read']} | {r1['accepted']} | "
        f"{r1['members']} | {r1['added']} | {r1['removed']} | {r1['unchanged']} | "
        f"{r1['seconds']:.2f} | {r1['read'] / r1['seconds']:,.0f} | {grown(r1):.0f} | < 20 s: "
        f"{'met' if ingest_ok else 'MISSED'} |",
        f"| ingest v2 (--append, 10% of rows new) | {r2['read']} | {r2['accepted']} | "
        f"{r2['members']} | {r2['added']} | {r2['removed']} | {r2['unchanged']} | "
        f"{r2['seconds']:.2f} | {r2['read'] / r2['seconds']:,.0f} | {grown(r2):.0f} | |",
        f"| ingest v3 (snapshot, 10% of rows changed) | {r3['read']} | {r3['accepted']} | "
        f"{r3['members']} | {r3['added']} | {r3['removed']} | {r3['unchanged']} | "
        f"{r3['seconds']:.2f} | {r3['read'] / r3['seconds']:,.0f} | {grown(r3):.0f} | |",
        f"| diff v1 -> v2 ({r1['members']} vs {r2['members']} members) | | | | "
        f"{r2['diff']['added']} | {r2['diff']['removed']} | {r2['diff']['unchanged']} | "
        f"{r2['diff']['seconds']:.3f} | | | |",
        f"| diff v1 -> v3 ({r1['members']} vs {r3['members']} members) | | | | "
        f"{r3['diff']['added']} | {r3['diff']['removed']} | {r3['diff']['unchanged']} | "
        f"{r3['diff']['seconds']:.3f} | | | < 2 s: {'met' if diff_ok else 'MISSED'} |",
        "",
        f"Store file after the three versions: {db_mb:.1f} MiB. Peak - baseline is the "
        "ingesting process's peak RSS (VmHWM) less its RSS just before the ingest; v2 and v3 "
        "ingest into a store that already holds the earlier versions.",
        "",
        "## Peak memory against file size",
        "",
        "Peak RSS (VmHWM) of the ingesting process; the baseline is its RSS after imports and "
        "opening the store, just before the ingest.",
        "",
        "| rows | file MiB | seconds | baseline RSS MiB | peak RSS MiB | peak - baseline MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in memory:
        lines.append(f"| {r['rows']} | {r['file_mb']:.1f} | {r['seconds']:.2f} | "
                     f"{r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['peak_mb'] - r['baseline_mb']:.0f} |")
    if len(memory) >= 2:
        first, last = memory[0], memory[-1]
        growth = (last["peak_mb"] - first["peak_mb"]) / max(first["peak_mb"], 1)
        lines += ["", f"From {first['rows']} to {last['rows']} rows "
                      f"({last['rows'] / first['rows']:.0f}x the file) peak RSS changed by "
                      f"{growth:+.0%}."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
