"""What one run did (``RunOutcome``, stored as the run's result) and where a schedule keeps
its files (inboxes, exports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from curator.store import Store


@dataclass
class RunOutcome:
    """What one run did (also stored as the run's result)."""

    run_id: str
    schedule: str
    status: str = "running"              # done or failed
    trigger: str = "due"                 # due or manual
    started_at: str = ""                 # clock time, ISO
    finished_at: str | None = None
    files_new: list[str] = field(default_factory=list)
    files_seen: int = 0                  # already ingested (same content), skipped
    files_waiting: list[str] = field(default_factory=list)  # still being written
    files_bad: list[dict[str, str]] = field(default_factory=list)  # path, reason
    version: int | None = None           # the version this run created
    pool_version: int | None = None      # the version this run selected from
    resumed: str | None = None           # an unfinished earlier run whose work this one used
    n_new_samples: int = 0               # in the pool selected from
    n_quarantined_rows: int = 0
    stage: str | None = None
    selection_id: str | None = None
    parent: str | None = None
    n_selected: int = 0
    reused_selection: bool = False
    pairs_computed: int = 0
    pairs_reused: int = 0
    mask: bool = False
    export: str | None = None
    note: str | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step, and total

    def summary(self) -> str:
        if self.status == "failed":
            return f"{self.schedule}: run {self.run_id} failed: {self.error}"
        parts = []
        if self.files_new:
            parts.append(f"{len(self.files_new)} new file{'s' * (len(self.files_new) != 1)}"
                         + (f" -> v{self.version}" if self.version else ""))
        if self.files_bad:
            parts.append(f"{len(self.files_bad)} bad file{'s' * (len(self.files_bad) != 1)} "
                         "quarantined")
        if self.resumed:
            parts.append(f"resumed run {self.resumed}, which stopped after ingesting "
                         f"v{self.pool_version}")
        if self.selection_id:
            parts.append(f"{self.stage} selection {self.selection_id}"
                         + (f" (parent {self.parent})" if self.parent else "")
                         + f": {self.n_selected} of {self.n_new_samples}")
        if self.export:
            parts.append(f"export {self.export}")
        if self.note:
            parts.append(self.note)
        return f"{self.schedule}: run {self.run_id} done: " + "; ".join(parts)


def schedule_folder(store: Store, name: str) -> Path:
    """Where a schedule keeps the files of a run being ingested (<store>/schedules/NAME)."""
    return store.path.resolve() / "schedules" / name


def export_folder(store: Store, name: str) -> Path:
    """Exports of a schedule: one folder per run, and ``latest`` (a link to the newest good
    one) below ``<store>/exports/NAME``."""
    return store.path.resolve() / "exports" / name
