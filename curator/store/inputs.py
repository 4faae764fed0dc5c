"""Input files already ingested, by content checksum: a renamed or re-copied file is not
ingested twice (recipes and schedules both read and write this record)."""

from __future__ import annotations

from collections.abc import Iterable

from curator.store.db import Store


def is_ingested(store: Store, dataset: str, sha256: str) -> bool:
    return bool(store.query("SELECT 1 FROM ingested_files WHERE dataset = ? AND sha256 = ?",
                            [dataset, sha256]))


def record_ingested(store: Store, dataset: str, files: Iterable[tuple[str, str]],
                    version: int | None) -> None:
    """Record ``files`` (sha256, path) as ingested into ``dataset`` ``version``; a checksum
    recorded before keeps its first path and version."""
    rows = [[dataset, sha, path, version] for sha, path in files]
    if not rows:
        return
    with store.atomic() as con:
        con.executemany("INSERT OR IGNORE INTO ingested_files (dataset, sha256, path, version) "
                        "VALUES (?, ?, ?, ?)", rows)
