"""The trash: samples set aside by a person, left out of later selections, restorable.

Trashing never deletes a sample or changes a version: versions stay the record of what
arrived. It changes what later selections may pick (``curator.stages.resolve_pools`` leaves
trashed samples out of the pool and the target set, and records which it left out);
selections made before stay as they were. Restoring takes a sample out of the trash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from curator.store.datasets import require_dataset
from curator.store.db import Store
from curator.store.errors import NotFound

PREVIEW_CHARS = 160


def _ids_table(ids: Sequence[str]) -> pa.Table:
    return pa.table({"sample_id": pa.array(list(dict.fromkeys(map(str, ids))), pa.string())})


def trash_samples(store: Store, dataset: str, sample_ids: Sequence[str],
                  reason: str | None = None) -> int:
    """Put samples of ``dataset`` in its trash; returns how many were not there already.

    Every id must be a member of some version of the dataset (NotFound names the first
    that is not); a sample already in the trash keeps its first reason and time.
    """
    require_dataset(store, dataset)
    if not sample_ids:
        return 0
    reason = (reason or "").strip() or None
    with store.atomic() as con:
        con.register("_ids", _ids_table(sample_ids))
        unknown = con.execute(
            "SELECT i.sample_id FROM _ids i WHERE NOT EXISTS (SELECT 1 FROM version_members m "
            "WHERE m.dataset = ? AND m.sample_id = i.sample_id) ORDER BY 1",
            [dataset]).fetchall()
        if unknown:
            con.unregister("_ids")
            raise NotFound(f"{len(unknown)} id(s) are not samples of {dataset}: "
                           f"{', '.join(r[0] for r in unknown[:3])}")
        before = con.execute("SELECT count(*) FROM trash WHERE dataset = ?",
                             [dataset]).fetchall()[0][0]
        con.execute("INSERT OR IGNORE INTO trash (dataset, sample_id, reason) "
                    "SELECT ?, sample_id, ? FROM _ids", [dataset, reason])
        after = con.execute("SELECT count(*) FROM trash WHERE dataset = ?",
                            [dataset]).fetchall()[0][0]
        con.unregister("_ids")
    return int(after - before)


def restore_samples(store: Store, dataset: str, sample_ids: Sequence[str] | None = None) -> int:
    """Take samples out of ``dataset``'s trash (all of them with ``sample_ids=None``);
    returns how many were restored. Ids that are not in the trash are ignored."""
    require_dataset(store, dataset)
    with store.atomic() as con:
        before = con.execute("SELECT count(*) FROM trash WHERE dataset = ?",
                             [dataset]).fetchall()[0][0]
        if sample_ids is None:
            con.execute("DELETE FROM trash WHERE dataset = ?", [dataset])
        elif sample_ids:
            con.register("_ids", _ids_table(sample_ids))
            con.execute("DELETE FROM trash WHERE dataset = ? AND sample_id IN "
                        "(SELECT sample_id FROM _ids)", [dataset])
            con.unregister("_ids")
        after = con.execute("SELECT count(*) FROM trash WHERE dataset = ?",
                            [dataset]).fetchall()[0][0]
    return int(before - after)


def trashed_ids(store: Store, dataset: str) -> set[str]:
    """Ids in ``dataset``'s trash (an unknown dataset has none)."""
    return {r[0] for r in store.query("SELECT sample_id FROM trash WHERE dataset = ?",
                                      [dataset])}


def trash_count(store: Store, dataset: str) -> int:
    return int(store.query("SELECT count(*) FROM trash WHERE dataset = ?", [dataset])[0][0])


def trash_page(store: Store, dataset: str, limit: int = 50,
               offset: int = 0) -> list[dict[str, Any]]:
    """The trash, newest first, with previews of each sample."""
    rows = store.query(
        "SELECT t.sample_id, t.reason, t.trashed_at, s.prompt, s.response FROM trash t "
        "JOIN samples s USING (sample_id) "
        "WHERE t.dataset = ? ORDER BY t.trashed_at DESC, t.sample_id LIMIT ? OFFSET ?",
        [dataset, limit, offset])
    return [{"sample_id": r[0], "reason": r[1], "trashed_at": r[2],
             "prompt": (r[3] or "")[:PREVIEW_CHARS], "response": (r[4] or "")[:PREVIEW_CHARS]}
            for r in rows]
