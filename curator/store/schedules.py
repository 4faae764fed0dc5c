"""Schedule SQL that has moved behind the store so far (the rest is still in
``curator/schedule/``: see docs/architecture.md)."""

from __future__ import annotations

from curator.store.db import Store


def last_run_statuses(store: Store) -> dict[str, str]:
    """run id -> status of each schedule's last run."""
    return {r[0]: r[1] for r in store.query(
        "SELECT run_id, status FROM runs WHERE kind = 'schedule' AND run_id IN (SELECT "
        "last_run_id FROM schedules)")}
