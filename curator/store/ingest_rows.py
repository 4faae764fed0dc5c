"""Ingest's writes: stage a batch of samples, members and quarantined rows under an ingest
run, then turn the staged rows into a new version. Both run inside the caller's
transaction (``curator.ingestion.ingest`` holds the boundaries and its write lock)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa


def stage_batch(con: duckdb.DuckDBPyConnection, run_id: str, samples: pa.Table | None,
                members: pa.Table | None, bad: Sequence[Sequence[Any]]) -> int:
    """Add the batch's new ``samples``, stage its ``members`` (the first occurrence of a
    sample in the run stays) and quarantine ``bad`` rows; members staged.

    The tables have no primary keys (DuckDB would hold their indexes in memory, growing
    with the store), so each insert skips the ids already present itself. The hash join
    builds on the smaller side, here the batch, and scans only the id column of the table."""
    staged = 0
    if samples is not None and members is not None:
        con.register("_samples", samples)
        con.execute("INSERT INTO samples (sample_id, messages, prompt, response, n_chars) "
                    "SELECT sample_id, messages, prompt, response, n_chars FROM _samples b "
                    "WHERE NOT EXISTS (SELECT 1 FROM samples s "
                    "WHERE s.sample_id = b.sample_id)")
        con.unregister("_samples")
        con.register("_members", members)
        # The first occurrence across batches stays: later ones are duplicates.
        staged = con.execute(
            "INSERT INTO ingest_staging SELECT * FROM _members m WHERE NOT EXISTS "
            "(SELECT 1 FROM ingest_staging s WHERE s.run_id = ? AND "
            "s.sample_id = m.sample_id)", [run_id]).fetchone()[0]
        con.unregister("_members")
    if bad:
        con.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", bad)
    return staged


@dataclass
class VersionCounts:
    """What the version row records about an ingest (given) ..."""
    mode: str
    n_read: int
    n_accepted: int
    n_duplicates: int
    n_quarantined: int


@dataclass
class CommittedVersion:
    """... and what committing it found."""
    version: int
    parent: int | None
    n_added: int
    n_removed: int
    n_unchanged: int
    n_members: int


def commit_version(con: duckdb.DuckDBPyConnection, run_id: str, dataset: str, source: str,
                   append: bool, message: str | None, counts: VersionCounts,
                   record_file: tuple[str, str] | None = None) -> CommittedVersion:
    """The version row, its members (the run's staged rows, plus the parent's with
    ``append``), the staged quarantine's version, and ``record_file`` (sha256, path) as
    ingested; clears the run's staging rows."""
    con.execute("INSERT OR IGNORE INTO datasets (name) VALUES (?)", [dataset])
    parent = con.execute("SELECT max(version) FROM versions WHERE dataset = ?",
                         [dataset]).fetchone()[0]
    version = (parent or 0) + 1
    # Counts come from the inserts and the parent's row, not from scans of the new version.
    n_members = con.execute(
        "INSERT INTO version_members SELECT ?, ?, sample_id, metadata, source_file, "
        "source_line FROM ingest_staging WHERE run_id = ?",
        [dataset, version, run_id]).fetchone()[0]
    if parent is None:
        n_added, n_removed, n_unchanged = n_members, 0, 0
    else:
        n_parent = con.execute("SELECT n_members FROM versions WHERE dataset = ? AND "
                               "version = ?", [dataset, parent]).fetchone()[0]
        if append:
            # Earlier members stay, with their own metadata, unless the input repeats them:
            # every parent member is unchanged.
            n_members += con.execute(
                "INSERT INTO version_members SELECT dataset, ?, sample_id, metadata, "
                "source_file, source_line FROM version_members p WHERE dataset = ? AND "
                "version = ? AND NOT EXISTS (SELECT 1 FROM ingest_staging s WHERE "
                "s.run_id = ? AND s.sample_id = p.sample_id)",
                [version, dataset, parent, run_id]).fetchone()[0]
            n_unchanged = n_parent
        else:
            n_unchanged = con.execute(
                "SELECT count(*) FROM ingest_staging s WHERE run_id = ? AND EXISTS "
                "(SELECT 1 FROM version_members p WHERE p.dataset = ? AND p.version = ? "
                "AND p.sample_id = s.sample_id)", [run_id, dataset, parent]).fetchone()[0]
        n_added, n_removed = n_members - n_unchanged, n_parent - n_unchanged
    con.execute(
        "INSERT INTO versions (dataset, version, parent, mode, source, message, n_read, "
        "n_accepted, n_duplicates, n_quarantined, n_added, n_removed, n_unchanged, "
        "n_members, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [dataset, version, parent, counts.mode, source, message, counts.n_read,
         counts.n_accepted, counts.n_duplicates, counts.n_quarantined, n_added,
         n_removed, n_unchanged, n_members, run_id])
    con.execute("UPDATE quarantine SET version = ? WHERE run_id = ?", [version, run_id])
    if record_file is not None:
        con.execute("INSERT OR IGNORE INTO ingested_files (dataset, sha256, path, version) "
                    "VALUES (?, ?, ?, ?)", [dataset, *record_file, version])
    con.execute("DELETE FROM ingest_staging WHERE run_id = ?", [run_id])
    return CommittedVersion(version, parent, n_added, n_removed, n_unchanged, n_members)
