"""Schedule rows, leases, watched and quarantined files, and schedule run bookkeeping in
the store (``curator/schedule/`` decides; these functions hold its SQL). Functions taking
``con`` run inside the caller's transaction; the others open their own."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import duckdb

from curator.store.db import Store


def last_run_statuses(store: Store) -> dict[str, str]:
    """run id -> status of each schedule's last run."""
    return {r[0]: r[1] for r in store.query(
        "SELECT run_id, status FROM runs WHERE kind = 'schedule' AND run_id IN (SELECT "
        "last_run_id FROM schedules)")}


# -- retried single-statement writes --------------------------------------------------------

def is_conflict(exc: Exception) -> bool:
    return "conflict" in str(exc).lower()


def _write(store: Store, sql: str, params: list[Any], attempts: int = 20) -> int:
    """One UPDATE in its own transaction, retried when it conflicts with a concurrent write
    to the same row (a lease heartbeat, the app pausing a schedule); rows changed."""
    for attempt in range(attempts):
        try:
            with store.atomic() as con:
                return con.execute(sql, params).fetchone()[0]
        except duckdb.TransactionException as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    return 0


# -- schedule rows -----------------------------------------------------------------------

def schedule_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute("SELECT 1 FROM schedules WHERE name = ?", [name]).fetchone() is not None


def schedule_watching(con: duckdb.DuckDBPyConnection, dataset: str,
                      watch_dir: str) -> str | None:
    """The schedule that watches ``watch_dir`` for ``dataset``, or None."""
    row = con.execute("SELECT name FROM schedules WHERE dataset = ? AND watch_dir = ?",
                      [dataset, watch_dir]).fetchone()
    return row[0] if row else None


def insert_schedule(con: duckdb.DuckDBPyConnection, name: str, dataset: str, watch_dir: str,
                    every_seconds: int | None, cron: str | None, recipe_json: str,
                    next_run_at: Any, created_at: Any) -> None:
    con.execute(
        "INSERT INTO schedules (name, dataset, watch_dir, every_seconds, cron, recipe, "
        "paused, next_run_at, created_at, failures) VALUES (?, ?, ?, ?, ?, ?, false, ?, ?, 0)",
        [name, dataset, watch_dir, every_seconds, cron, recipe_json, next_run_at, created_at])


def schedule_row(store: Store, name: str, columns: Sequence[str]) -> dict[str, Any] | None:
    rows = store.query_dicts(f"SELECT {', '.join(columns)} FROM schedules WHERE name = ?",
                             [name])
    return rows[0] if rows else None


def schedule_names(store: Store) -> list[str]:
    return [r[0] for r in store.query("SELECT name FROM schedules ORDER BY name")]


def schedule_rows(store: Store, columns: Sequence[str]) -> list[dict[str, Any]]:
    return store.query_dicts(f"SELECT {', '.join(columns)} FROM schedules ORDER BY name")


def set_paused(store: Store, name: str, paused: bool) -> int:
    sql = ("UPDATE schedules SET paused = true WHERE name = ?" if paused
           else "UPDATE schedules SET paused = false WHERE name = ?")
    return _write(store, sql, [name])


def set_next_run_at(store: Store, name: str, next_run_at: Any) -> int:
    return _write(store, "UPDATE schedules SET next_run_at = ? WHERE name = ?",
                  [next_run_at, name])


def set_last_run_id(store: Store, name: str, run_id: str) -> int:
    return _write(store, "UPDATE schedules SET last_run_id = ? WHERE name = ?",
                  [run_id, name])


def lock_holder(con: duckdb.DuckDBPyConnection, name: str) -> tuple[Any, Any] | None:
    """(lock_owner, lock_expires_at) of ``name``, or None when there is no such row."""
    row = con.execute("SELECT lock_owner, lock_expires_at FROM schedules WHERE name = ?",
                      [name]).fetchone()
    return (row[0], row[1]) if row else None


def delete_schedule(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Delete ``name`` and its watched-file cache (run history stays)."""
    con.execute("DELETE FROM schedules WHERE name = ?", [name])
    con.execute("DELETE FROM watched_files WHERE schedule = ?", [name])


def schedule_run_rows(store: Store, name: str | None, limit: int) -> list[dict[str, Any]]:
    """Schedule runs, newest first, with their raw ``result`` and ``config`` JSON."""
    sql = ("SELECT run_id, json_extract_string(config, '$.schedule') AS schedule, dataset, "
           "status, error, started_at, finished_at, result, config FROM runs "
           "WHERE kind = 'schedule'")
    params: list[Any] = []
    if name is not None:
        sql += " AND json_extract_string(config, '$.schedule') = ?"
        params.append(name)
    sql += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
    params.append(limit)
    return store.query_dicts(sql, params)


def finish_schedule_run(store: Store, name: str, owner: str, next_run_at: Any, failures: int,
                        error: str | None, selection_id: str | None,
                        export: str | None) -> int:
    """Record a run's end on the schedule and release the lease (only while ``owner``
    holds it); rows changed."""
    return _write(store,
                  "UPDATE schedules SET next_run_at = ?, failures = ?, last_error = ?, "
                  "last_selection_id = coalesce(?, last_selection_id), "
                  "last_export = coalesce(?, last_export), lock_owner = NULL, "
                  "lock_expires_at = NULL WHERE name = ? AND lock_owner = ?",
                  [next_run_at, failures, error, selection_id, export, name, owner])


def fail_abandoned_run(store: Store, run_id: str, error: str) -> None:
    """Mark ``run_id`` failed if it is still marked running."""
    with store.atomic() as con:
        con.execute("UPDATE runs SET status = 'failed', error = ?, updated_at = "
                    "current_timestamp, finished_at = current_timestamp WHERE run_id = ? "
                    "AND status = 'running'", [error, run_id])


# -- leases ------------------------------------------------------------------------------

def take_lease(store: Store, name: str, owner: str, expires_at: Any, now: Any,
               gone_owner: str, due_at: Any | None = None) -> bool:
    """One conditional UPDATE: give ``name``'s lease to ``owner`` when it is free, expired,
    or held by ``gone_owner``; with ``due_at``, only when unpaused and due by then. Raises
    ``duckdb.TransactionException`` on a write conflict (not retried)."""
    sql = ("UPDATE schedules SET lock_owner = ?, lock_expires_at = ? WHERE name = ? AND "
           "(lock_owner IS NULL OR lock_expires_at IS NULL OR lock_expires_at <= ? OR "
           "lock_owner = ?)")
    params: list[Any] = [owner, expires_at, name, now, gone_owner]
    if due_at is not None:
        sql += " AND NOT paused AND next_run_at IS NOT NULL AND next_run_at <= ?"
        params.append(due_at)
    with store.atomic() as con:
        return bool(con.execute(sql, params).fetchone()[0])


def extend_lease(store: Store, name: str, owner: str, until: Any) -> bool:
    """False when ``owner`` no longer holds the lease."""
    with store.atomic() as con:
        return con.execute("UPDATE schedules SET lock_expires_at = ? WHERE name = ? AND "
                           "lock_owner = ?", [until, name, owner]).fetchone()[0] > 0


def free_lease(store: Store, name: str, owner: str) -> int:
    return _write(store, "UPDATE schedules SET lock_owner = NULL, lock_expires_at = NULL "
                  "WHERE name = ? AND lock_owner = ?", [name, owner])


# -- watched and quarantined files -------------------------------------------------------

def known_checksums(store: Store, dataset: str) -> set[str]:
    """Checksums of files already ingested into or quarantined for ``dataset``."""
    return {r[0] for r in store.query(
        "SELECT sha256 FROM ingested_files WHERE dataset = ? UNION "
        "SELECT sha256 FROM quarantined_files WHERE dataset = ?", [dataset] * 2)}


def watched_files(store: Store, schedule: str) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) of the files ``schedule`` has hashed before."""
    return {r[0]: (r[1], r[2], r[3]) for r in store.query(
        "SELECT path, size, mtime_ns, sha256 FROM watched_files WHERE schedule = ?",
        [schedule])}


def quarantine_file(store: Store, dataset: str, sha256: str, path: str, reason: str,
                    schedule: str, run_id: str) -> None:
    with store.atomic() as con:
        con.execute("INSERT OR IGNORE INTO quarantined_files (dataset, sha256, path, "
                    "reason, schedule, run_id) VALUES (?, ?, ?, ?, ?, ?)",
                    [dataset, sha256, path, reason, schedule, run_id])


def record_watched_files(store: Store, rows: list[list[Any]]) -> None:
    """Rows of (schedule, path, size, mtime_ns, sha256), replacing older entries."""
    with store.atomic() as con:
        con.executemany("INSERT OR REPLACE INTO watched_files VALUES (?, ?, ?, ?, ?)", rows)
