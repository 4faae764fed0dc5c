"""The quality prior's settings against the corrupted share of each stage (selection only).

    .venv/bin/python bench/prior_sweep.py                       # the default settings
    .venv/bin/python bench/prior_sweep.py 0.5,0.3,1 0.25,0.3,1 0.5,0.3,3

Each argument is ``AUTO_Z,AUTO_MAX_DROP,weight``: the z-score above which ``drop: auto``
leaves a row out, the most of the pool it may leave out (``curator/stages/quality.py``)
and the modular term's weight. For each, DELIFT with the prior selects 30% of the quality
benchmark's pool (``bench/quality_prior.py``'s data and store) in the instruction stage
(v1), the task stage toward Q, the continual stage (v2's new rows, parent the instruction
selection) and the task stage at 15% (the training benchmark's budget), and the table
gives the corrupted share over the pool's base rate with the kinds kept. No training: it
asks which settings keep corrupted rows out, not whether the subset trains better.

Selections are made again every time (``reuse=False``: the two constants are not in a
selection's key); the scores come from the store, so after the first setting each takes
a minute or two on 2 cores. For the same reason give it a workdir of its own, not one
``quality_prior.py`` goes on using: a selection stored here under other constants has the
key of the default one, and quality_prior.py would reuse it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality_prior as qp  # noqa: E402

STAGES = (("instruction", "30%"), ("task", "30%"), ("continual", "30%"), ("task 15%", "15%"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", default=None, help="AUTO_Z,AUTO_MAX_DROP,weight")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/curator-prior-sweep"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prior_sweep.md")
    return p.parse_args(argv)


def sweep(settings: list[tuple[float, float, float]], workdir: Path) -> list[dict]:
    import curator.stages.quality as prior
    from curator.config import ScoringOptions
    from curator.stages import select_stage

    args = qp.parse_args(["--quick", "--workdir", str(workdir), "--eval-size", "400"])
    args.workdir.mkdir(parents=True, exist_ok=True)
    lm = qp.scoring_model(args)
    data, store = qp.prepare(args)
    labels = data.labels()
    options = ScoringOptions(k=8, batch_size=16, max_length=512)  # as quality_prior.select
    defaults = prior.AUTO_Z, prior.AUTO_MAX_DROP
    rows = []
    try:
        for z, cap, weight in settings:
            prior.AUTO_Z, prior.AUTO_MAX_DROP = z, cap
            args.weight = weight
            row: dict = {"z": z, "cap": cap, "weight": weight, "stages": {}}
            prev, t = None, time.monotonic()
            for name, budget in STAGES:
                stage = name.split()[0]
                spec = qp.spec_for("delift+both", args, budget, stage)
                if stage == "continual":
                    spec.parent, spec.pool = prev, "new"
                out = select_stage(store, "pool", spec, lm=lm, options=options, reuse=False,
                                   previous_selection=prev if stage == "continual" else None)
                row["stages"][name] = qp.stage_cell(store, labels, spec, prev, out.sample_ids)
                if stage == "instruction":
                    prev = out.selection_id
            row["seconds"] = round(time.monotonic() - t)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        prior.AUTO_Z, prior.AUTO_MAX_DROP = defaults
    return rows


def write(rows: list[dict], argv: list[str], out: Path, seconds: float) -> None:
    from _machine import cpu_name

    bf16 = "AVX512-BF16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no BF16"
    lines = ["# The quality prior's settings against the corrupted share per stage", "",
             f"Command: `.venv/bin/python bench/prior_sweep.py {' '.join(argv)}` "
             f"({dt.date.today()}, {seconds / 60:.0f} min). Machine: {cpu_name()} ({bf16}).",
             "", "DELIFT with the prior; each cell: corrupted share of the selection over the "
             "pool's base rate, in brackets the same for the kinds the default signal sees "
             "(all but wrong_option), then the corrupted rows kept by kind.", "",
             "| AUTO_Z | max drop | weight | " + " | ".join(n for n, _ in STAGES) + " |",
             "|---|---|---|" + "---|" * len(STAGES)]
    for r in rows:
        cells = [qp.cell_text(r["stages"][name]) for name, _ in STAGES]
        lines.append(f"| {r['z']} | {r['cap']} | {r['weight']} | " + " | ".join(cells) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import curator.stages.quality as prior

    settings = [tuple(float(x) for x in s.split(",")) for s in args.settings] or [
        (prior.AUTO_Z, prior.AUTO_MAX_DROP, 1.0)]
    if any(len(s) != 3 for s in settings):
        raise SystemExit("each setting is AUTO_Z,AUTO_MAX_DROP,weight (e.g. 0.5,0.3,1)")
    t = time.monotonic()
    rows = sweep(settings, args.workdir)
    write(rows, argv, args.out, time.monotonic() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
