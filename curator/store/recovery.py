"""Recovery after kill -9: runs of dead processes, and what they left behind.

A run records the process that started it: host name, pid and the process's start time
(so a pid the system has since given to another process is not taken for the run's). The
first time a Store object opens its file (so in every command), runs still marked
``running`` whose process on this host is gone are marked failed ("abandoned"), and their
leftovers are cleaned: an ingest's staging and unversioned quarantine rows, a scheduled
run's lease, an export's temporary folder. Runs of other hosts are left alone: this host
cannot tell whether their processes live (a dead worker elsewhere is recovered by the
schedule's lease expiring, `curator.schedule`).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from curator.folders import EXPORT_NAMES, clean_leftovers

__all__ = ["EXPORT_NAMES", "clean_export_leftovers", "recover"]


def host_name() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """An identity for the start of process ``pid``: boot id and start time in clock ticks
    since boot (Linux /proc). None where that cannot be read (other systems, no such pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # Fields after the command name in parentheses (which may hold spaces); starttime is
    # field 22 of stat(5), the 20th after the name.
    fields = stat[stat.rindex(")") + 2:].split()
    return f"{boot[:8]}:{fields[19]}"


def process_alive(pid: int | None, started: str | None) -> bool:
    """Whether the process that recorded (pid, started) on this host still runs. Unknown
    counts as alive: only a process known to be gone is recovered."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user: compare start times below
    except OSError:
        return True
    if started is None:
        return True
    now = process_start(pid)
    return now is None or now == started


@dataclass
class Abandoned:
    run_id: str
    kind: str
    pid: int
    config: dict[str, Any]


def recover(con: duckdb.DuckDBPyConnection) -> list[Abandoned]:
    """Mark this host's runs of dead processes abandoned and clean their leftovers (one
    transaction for the rows; folders after it). Returns the runs recovered."""
    host = host_name()
    rows = con.execute("SELECT run_id, kind, pid, proc_start, config FROM runs "
                       "WHERE status = 'running' AND host = ?", [host]).fetchall()
    dead = [Abandoned(r[0], r[1], r[2], _json(r[4])) for r in rows
            if not process_alive(r[2], r[3])]
    if not dead:
        return []
    con.execute("BEGIN TRANSACTION")
    try:
        for run in dead:
            con.execute(
                "UPDATE runs SET status = 'failed', error = ?, updated_at = current_timestamp, "
                "finished_at = current_timestamp WHERE run_id = ? AND status = 'running'",
                [f"abandoned: process {run.pid} on {host} ended without finishing",
                 run.run_id])
            con.execute("DELETE FROM ingest_staging WHERE run_id = ?", [run.run_id])
            con.execute("DELETE FROM quarantine WHERE run_id = ? AND version IS NULL",
                        [run.run_id])
            owner = run.config.get("owner")
            if run.kind == "schedule" and owner:
                # The dead worker's lease: free it now instead of when it expires, so
                # `schedule list` stops saying "running" and the next worker may start.
                con.execute("UPDATE schedules SET lock_owner = NULL, lock_expires_at = NULL "
                            "WHERE lock_owner = ?", [owner])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for run in dead:
        if run.kind == "export" and run.config.get("tmp"):
            clean_export_leftovers(Path(run.config["tmp"]), Path(run.config["out"]))
    return dead


def clean_export_leftovers(tmp: Path, out: Path) -> None:
    """Remove a killed export's temporary folder and put back or remove the previous export
    it moved aside (curator.folders.clean_leftovers: the names curator writes are there)."""
    clean_leftovers(tmp, out)


def clear_stale_staging(con: duckdb.DuckDBPyConnection) -> None:
    """Staging and unversioned quarantine rows of ingests no longer running. Ingest runs
    recorded without a host (by a curator before runs knew their host) and not updated
    for an hour count as abandoned; others are recovered by ``recover``."""
    con.execute("UPDATE runs SET status = 'failed', error = 'abandoned (process gone)', "
                "finished_at = current_timestamp WHERE kind = 'ingest' AND status = 'running'"
                " AND host IS NULL AND updated_at < current_timestamp - INTERVAL 1 HOUR")
    con.execute("DELETE FROM ingest_staging WHERE run_id NOT IN "
                "(SELECT run_id FROM runs WHERE status = 'running')")
    con.execute("DELETE FROM quarantine WHERE version IS NULL AND run_id NOT IN "
                "(SELECT run_id FROM runs WHERE status = 'running')")


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value) if value else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}
