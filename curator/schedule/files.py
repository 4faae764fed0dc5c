"""Run steps on files: scan the watched folder (by checksum), quarantine unreadable files,
ingest the new ones as one version through an inbox, and recover inboxes of dead runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curator.digests import sha256_file as file_sha256
from curator.schedule.definitions import Schedule
from curator.schedule.outcome import RunOutcome, schedule_folder
from curator.store import Store
from curator.store.datasets import has_versions, latest_version
from curator.store.inputs import record_ingested
from curator.store.schedule_rows import (
    known_checksums,
    quarantine_file,
    record_watched_files,
    watched_files,
)

SETTLE_SECONDS = 2.0         # a file modified more recently may still be being written
_INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")


def _candidate_files(folder: Path) -> list[Path]:
    """Input files below ``folder`` (recursively), skipping hidden files and folders and
    files of other types (so "data.jsonl.part" or ".data.jsonl" is not read until renamed)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"watched folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def check_input_file(path: Path) -> str | None:
    """Why ``path`` cannot be ingested (unreadable, empty, no usable row), or None."""
    from curator.ingestion.readers import InputError, read_file, sample_from_row
    from curator.ingestion.schemas import RowError

    if path.stat().st_size == 0:
        return "empty file"
    first_problem = None
    try:
        for row in read_file(path):
            try:
                sample_from_row(row)
                return None
            except RowError as exc:
                first_problem = first_problem or f"line {row.line}: {exc}"
    except (InputError, OSError, ValueError) as exc:
        return str(exc)
    except Exception as exc:  # pyarrow and friends raise their own types on corrupt files
        return f"unreadable: {exc}"
    return f"no usable rows ({first_problem})" if first_problem else "no rows"


def _scan(store: Store, sched: Schedule, outcome: RunOutcome,
          say: Callable[[str], None]) -> list[tuple[Path, str]]:
    """New files of the watched folder as (path, sha256); quarantines bad ones."""
    folder = Path(sched.watch_dir)
    with store.connect():
        known = known_checksums(store, sched.dataset)
        hashed = watched_files(store, sched.name)
    new: list[tuple[Path, str]] = []
    taken: set[str] = set()
    fresh: list[list[Any]] = []
    for path in _candidate_files(folder):
        stat = path.stat()
        if time.time() - stat.st_mtime < SETTLE_SECONDS:
            outcome.files_waiting.append(str(path))
            continue
        cached = hashed.get(str(path))
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            digest = cached[2]
        else:
            digest = file_sha256(path)
            fresh.append([sched.name, str(path), stat.st_size, stat.st_mtime_ns, digest])
        if digest in known or digest in taken:
            outcome.files_seen += 1
            continue
        reason = check_input_file(path)
        if reason is not None:
            outcome.files_bad.append({"path": str(path), "reason": reason})
            say(f"{sched.name}: quarantined {path}: {reason}")
            quarantine_file(store, sched.dataset, digest, str(path), reason, sched.name,
                            outcome.run_id)
            taken.add(digest)
            continue
        taken.add(digest)
        new.append((path, digest))
    if fresh:
        record_watched_files(store, fresh)
    return new


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ingest_new(store: Store, sched: Schedule, outcome: RunOutcome,
                new: list[tuple[Path, str]]) -> None:
    """All new files of a run become one new version (appended to the latest).

    The files are linked into an inbox folder named after the run, with a plan of their
    checksums, and the inbox is ingested (one transaction creates the version). If the
    worker dies after that commit and before the checksums are recorded, the next run
    finds the version by its source (the inbox) and records them (``_reconcile_inboxes``).
    """
    from curator.ingestion.ingest import ingest

    inbox = schedule_folder(store, sched.name) / "inbox" / outcome.run_id
    inbox.mkdir(parents=True, exist_ok=True)
    plan = []
    for i, (path, digest) in enumerate(new):
        target = inbox / f"{i:04d}-{path.name}"
        _link_or_copy(path, target)
        plan.append({"sha256": digest, "path": str(path), "inbox": target.name})
    (inbox / ".plan.json").write_text(json.dumps(plan, indent=1))
    names = ", ".join(Path(p["path"]).name for p in plan)
    summary = ingest(store, str(inbox), sched.dataset, append=has_versions(store, sched.dataset),
                     message=f"schedule {sched.name}, run {outcome.run_id}: {names}"[:500])
    _record_ingested(store, sched.dataset, plan, summary.version)
    shutil.rmtree(inbox, ignore_errors=True)
    outcome.files_new = [p["path"] for p in plan]
    outcome.version = summary.version
    outcome.n_quarantined_rows = summary.n_quarantined


def _record_ingested(store: Store, dataset: str, plan: list[dict[str, str]],
                     version: int) -> None:
    record_ingested(store, dataset, [(p["sha256"], p["path"]) for p in plan], version)


def _reconcile_inboxes(store: Store, sched: Schedule, current_run: str) -> None:
    """Inboxes left by dead runs: a committed version gets its files recorded; an ingest
    that never committed left nothing in the store, and its files are simply new again."""
    root = schedule_folder(store, sched.name) / "inbox"
    if not root.is_dir():
        return
    for inbox in sorted(root.iterdir()):
        if inbox.name == current_run or not inbox.is_dir():
            continue
        plan_file = inbox / ".plan.json"
        version = latest_version(store, sched.dataset, source=str(inbox))
        if version is not None and plan_file.exists():
            _record_ingested(store, sched.dataset, json.loads(plan_file.read_text()), version)
        shutil.rmtree(inbox, ignore_errors=True)
