"""How well do stored utilities tell noisy rows from clean ones? (the `harm` rules' evidence)

For every sample with at least two scored pairs on each side: its mean utility as a helper
(example) and as the helped one (target, "fit"), the AUC of each for the labelled noisy
rows, and how many noisy / clean rows a negative mean flags (the rules' threshold).

    python bench/harm_signals.py --store /tmp/demo-store --labels sample_data/labels.json

Labels: sample_data/labels.json ({id: {"noisy": bool, "noise_kind": ...}}) or a quality
benchmark's labels.json ({"rows": {id: {"corruption": ...}}}).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np


def auc(score: dict[str, float], noisy: dict[str, bool]) -> float | None:
    """P(score of a noisy row > score of a clean row), ties counted half."""
    ids = [s for s in score if s in noisy]
    y = np.array([noisy[s] for s in ids], dtype=bool)
    x = np.array([score[s] for s in ids])
    if y.all() or not y.any():
        return None
    pos, neg = x[y], x[~y]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="a curator store folder")
    p.add_argument("--labels", type=Path, required=True)
    args = p.parse_args()
    raw = json.loads(args.labels.read_text())
    rows = raw.get("rows", raw)
    noisy = {s: bool(r["noisy"]) if "noisy" in r else r.get("corruption") is not None
             for s, r in rows.items()}
    con = duckdb.connect(str(args.store / "curator.duckdb"), read_only=True)
    pairs = con.execute("SELECT target_id, example_id, utility FROM utilities "
                        "WHERE valid AND target_id <> example_id").fetchall()
    con.close()
    as_target: dict[str, list[float]] = defaultdict(list)
    as_example: dict[str, list[float]] = defaultdict(list)
    for t, e, u in pairs:
        as_target[t].append(u)
        as_example[e].append(u)
    for name, side in (("fit (as target)", as_target), ("helper (as example)", as_example)):
        mean = {s: float(np.mean(v)) for s, v in side.items() if len(v) >= 2 and s in noisy}
        flagged = [s for s, m in mean.items() if m < 0]
        n_noisy = sum(noisy[s] for s in mean)
        print(f"{name}: {len(mean)} rows with >= 2 pairs ({n_noisy} noisy); AUC of -mean "
              f"{auc({s: -m for s, m in mean.items()}, noisy)}; mean < 0 flags "
              f"{sum(noisy[s] for s in flagged)} noisy and "
              f"{sum(not noisy[s] for s in flagged)} clean")


if __name__ == "__main__":
    main()
