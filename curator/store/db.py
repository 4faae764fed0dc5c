"""The Store: a DuckDB file plus an artifacts folder, opened only for short stretches.

DuckDB lets one process at a time hold a file open for writing, and a process holding it
blocks every other process, readers included. So the store never keeps the file open:
each operation opens a connection, works in a short transaction and closes it, and an
open that finds the file locked retries with backoff for a bounded time before raising
``StoreLocked``. Long jobs compute outside the store and commit in batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from curator import env
from curator.store import recovery
from curator.store.errors import NotFound, SchemaTooNew, StoreError, StoreLocked
from curator.store.schema import LATEST, MIGRATIONS

DB_FILENAME = "curator.duckdb"
DEFAULT_STORE = "curator-store"


def default_store_path() -> Path:
    return Path(os.environ.get("CURATOR_STORE", DEFAULT_STORE))


def _is_lock_error(exc: Exception) -> bool:
    """Another process holds the file, or another thread of this one is opening it."""
    text = str(exc)
    if "Unique file handle conflict" in text:
        return True
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


def lock_timeout_from_env(default: float = 60.0) -> float:
    """Seconds to wait for a busy store: CURATOR_LOCK_TIMEOUT, a non-negative number."""
    try:
        return env.lock_timeout(default)
    except env.EnvError as exc:
        raise StoreError(str(exc)) from exc


# DuckDB shares one database instance among a process's connections to a file and tears it
# down when the last one closes. With two threads opening and closing their own connections
# at once (two ingests in one process), a scan of a registered Arrow table failed now and
# then with "Table Function with name python_arrow_scan does not exist" (twice in full test
# runs, never in isolation); the suspected cause is instance creation racing teardown.
# Opening and closing under one process-wide lock keeps them apart; the work between them
# still runs in parallel.
_INSTANCE_LOCK = threading.Lock()


class Store:
    """A curator store at ``path`` (a folder holding ``curator.duckdb`` and ``artifacts/``)."""

    def __init__(self, path: str | Path | None = None, *, lock_timeout: float | None = None,
                 create: bool = True):
        # Absolute once, here: a relative path would follow the process's working folder,
        # which an export into `--out .` replaces (issue 28).
        self.path = Path(os.path.abspath(Path(path) if path is not None
                                         else default_store_path()))
        self.db_path = self.path / DB_FILENAME
        self.artifacts = self.path / "artifacts"
        if lock_timeout is None:
            lock_timeout = lock_timeout_from_env()
        self.lock_timeout = lock_timeout
        self._local = threading.local()
        self._migrated = False
        self._recovered = False
        self.recovered: list[recovery.Abandoned] = []  # what the first open recovered
        if not create and not self.db_path.exists():
            raise NotFound(f"no curator store at {self.path} (create one with `curator init`)")

    # -- connections ------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.db_path.exists()

    def _open(self) -> duckdb.DuckDBPyConnection:
        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                with _INSTANCE_LOCK:
                    con = duckdb.connect(str(self.db_path))
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise StoreError(f"cannot open store {self.db_path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"store {self.path} is busy: another process has held it for more "
                        f"than {self.lock_timeout:g} s (set CURATOR_LOCK_TIMEOUT to wait longer)"
                    ) from exc
                # Jitter so two waiting processes do not retry in lock step.
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            # No vacuum at checkpoints. Every close checkpoints, and DuckDB's vacuum then merges
            # the small row groups that batched writes leave (an ingest writes one per batch)
            # with their neighbours, full ones included, in memory: a peak that grew with the
            # table (about 180 MiB more per 120k samples), in whichever command closed next.
            # Without it a table keeps one row group per batch written, and rows deleted from
            # a row group that keeps others are not reclaimed (a fully deleted one still is).
            with contextlib.suppress(duckdb.CatalogException):  # a DuckDB without the setting
                con.execute("SET max_vacuum_tasks = 0")
            return con

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for the duration of the block (reused when blocks nest)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            self._local.depth += 1
            try:
                yield con
            finally:
                self._local.depth -= 1
            return
        con = self._open()
        self._local.con, self._local.depth = con, 1
        try:
            if not self._migrated:
                self._migrate(con)
            if not self._recovered:
                # Once per Store object, so once per command: runs of this host's dead
                # processes are marked abandoned and their leftovers cleaned.
                self._recovered = True
                self.recovered = recovery.recover(con)
            yield con
        finally:
            self._local.con, self._local.depth = None, 0
            with _INSTANCE_LOCK:
                con.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A transaction: everything in the block is committed together or not at all.
        Nested blocks join the outer transaction."""
        with self.connect() as con:
            if getattr(self._local, "in_tx", False):
                yield con
                return
            con.execute("BEGIN TRANSACTION")
            self._local.in_tx = True
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")
            finally:
                self._local.in_tx = False

    # -- schema -----------------------------------------------------------------------

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                    "name TEXT, applied_at TIMESTAMP DEFAULT current_timestamp)")
        applied = {r[0] for r in con.execute("SELECT version FROM schema_version").fetchall()}
        if applied and max(applied) > LATEST:
            raise SchemaTooNew(
                f"store {self.path} has schema version {max(applied)}, this curator knows up "
                f"to {LATEST}: upgrade curator")
        for number, name, sql in MIGRATIONS:
            if number in applied:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)",
                            [number, name])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._migrated = True

    def schema_version(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    def init(self) -> None:
        """Create the store (folder, database, artifacts) if missing; migrate it if old."""
        with self.connect():
            pass
        self.artifacts.mkdir(parents=True, exist_ok=True)

    # -- small helpers ----------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()

    def query_dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- runs: long jobs record status and progress so they can be resumed or inspected --

    def start_run(self, kind: str, dataset: str | None = None,
                  config: dict[str, Any] | None = None, total: int | None = None,
                  run_id: str | None = None) -> str:
        run_id = run_id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self.atomic() as con:
            con.execute(
                "INSERT INTO runs (run_id, kind, dataset, status, total, config, pid, host, "
                "proc_start) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                [run_id, kind, dataset, total, json.dumps(config or {}), os.getpid(),
                 recovery.host_name(), recovery.process_start(os.getpid())])
        return run_id

    def update_run(self, run_id: str, done: int | None = None, total: int | None = None) -> None:
        with self.atomic() as con:
            con.execute(
                "UPDATE runs SET done = coalesce(?, done), total = coalesce(?, total), "
                "updated_at = current_timestamp WHERE run_id = ?", [done, total, run_id])

    def finish_run(self, run_id: str, status: str = "done", error: str | None = None,
                   result: dict[str, Any] | None = None) -> None:
        if status not in ("done", "failed"):
            raise ValueError(f"unknown run status {status!r}")
        with self.atomic() as con:
            con.execute(
                "UPDATE runs SET status = ?, error = ?, result = ?, updated_at = current_timestamp,"
                " finished_at = current_timestamp WHERE run_id = ?",
                [status, error, json.dumps(result) if result is not None else None, run_id])

    def runs(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs"
        params: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            params.append(kind)
        sql += " ORDER BY started_at DESC LIMIT ?"
        params.append(limit)
        return self.query_dicts(sql, params)

    def get_run(self, run_id: str) -> dict[str, Any]:
        rows = self.query_dicts("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            raise NotFound(f"no run {run_id!r}")
        return rows[0]
