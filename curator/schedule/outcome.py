"""What one run did (``RunOutcome``: the run report of ``curator.report``, stored as the
run's result) and where a schedule keeps its files (inboxes, exports)."""

from __future__ import annotations

from pathlib import Path

from curator.report import RunReport
from curator.store import Store

__all__ = ["RunOutcome", "RunReport", "export_folder", "schedule_folder"]


# A scheduled run's outcome is the one run report (kind "schedule"), stored as the run's
# result; worded by curator.report for the worker's log, the CLI and the app.
RunOutcome = RunReport


def schedule_folder(store: Store, name: str) -> Path:
    """Where a schedule keeps the files of a run being ingested (<store>/schedules/NAME)."""
    return store.path.resolve() / "schedules" / name


def export_folder(store: Store, name: str) -> Path:
    """Exports of a schedule: one folder per run, and ``latest`` (a link to the newest good
    one) below ``<store>/exports/NAME``."""
    return store.path.resolve() / "exports" / name
