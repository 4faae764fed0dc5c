"""The app's reads of the store as a whole: the overview's counts and recent runs.

Like every ``browse_*`` module: one short read per call, parameters only, small plain
values back (the app caches them for a few seconds).
"""

from __future__ import annotations

import json
from typing import Any

from curator.store import Store


def store_summary(store: Store) -> dict[str, int]:
    """Counts for the overview: datasets, versions, distinct samples, selections, masks."""
    with store.connect() as con:
        row = con.execute(
            "SELECT (SELECT count(*) FROM datasets), (SELECT count(*) FROM versions), "
            "(SELECT count(*) FROM samples), (SELECT count(*) FROM selections), "
            "(SELECT count(*) FROM masks), (SELECT count(*) FROM runs WHERE status = 'running')"
        ).fetchone()
    keys = ("datasets", "versions", "samples", "selections", "masks", "running")
    return dict(zip(keys, (int(x) for x in row), strict=True))


def is_empty(store: Store) -> bool:
    """True when the store file is missing or holds no dataset."""
    if not store.exists:
        return True
    return not store.query("SELECT 1 FROM datasets LIMIT 1")


# what a finished run's result counts, in words (runs that count no steps record these)
RESULT_COUNTS = {"accepted": "rows accepted", "quarantined": "quarantined", "n_rows": "rows",
                 "pairs": "pairs", "version": "version"}


def recent_runs(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """Newest runs with their status and progress in words (no config blobs): "done of
    total" while counted, else what the result counts ("90 rows", "12 pairs")."""
    rows = store.query_dicts(
        "SELECT run_id, kind, dataset, status, done, total, error, started_at, finished_at, "
        "result FROM runs ORDER BY started_at DESC LIMIT ?", [limit])
    for r in rows:
        result = json.loads(r.pop("result") or "null")
        r["progress"] = run_progress(r["status"], r.pop("done"), r.pop("total"), result)
    return rows


def run_progress(status: str, done: int | None, total: int | None, result: Any) -> str:
    if total:
        return f"{done or 0:,} of {total:,}"
    counted = [f"v{v}" if k == "version" else f"{v:,} {word}"
               for k, word in RESULT_COUNTS.items()
               if isinstance(result, dict) and isinstance(v := result.get(k), int)]
    if counted:
        return ", ".join(counted)
    if done:
        return f"{done:,}"
    return "finished" if status == "done" else ""
