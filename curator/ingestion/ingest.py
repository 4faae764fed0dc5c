"""Ingest: read an input, map it to samples, and record it as a new version of a dataset.

Rows stream through in batches. Each batch is written in its own short transaction into a
staging area keyed by the ingest run; only the final transaction creates the version, so
an ingest that dies half way leaves no half version (its staging rows are cleared by the
next command that opens the store, ``curator.store.recovery``, or the next ingest). Every
row ends up counted: read = accepted + duplicates + quarantined.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import pyarrow as pa

from curator.ingestion.readers import (
    DEFAULT_SPLIT,
    InputError,
    RawRow,
    read_source,
    sample_from_row,
)
from curator.ingestion.schemas import FieldMap, RowError
from curator.store import Store
from curator.store.ingest_rows import VersionCounts, commit_version, stage_batch
from curator.store.recovery import clear_stale_staging

BATCH_SIZE = 10_000
SHOWN_REASONS = 5  # in the summary; "+N more reasons" for the rest
_WRITE_LOCK = threading.RLock()


class IngestError(ValueError):
    """The input as a whole could not be ingested (message is for the user)."""


@dataclass
class IngestSummary:
    dataset: str
    version: int
    parent: int | None
    mode: str
    files: list[str]
    n_read: int = 0
    n_accepted: int = 0
    n_duplicates: int = 0
    n_quarantined: int = 0
    n_added: int = 0
    n_removed: int = 0
    n_unchanged: int = 0
    n_members: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [
            f"dataset {self.dataset}: version {self.version} ({self.mode}"
            + (f" on version {self.parent})" if self.parent else ")"),
            f"  rows read {self.n_read}: accepted {self.n_accepted}, duplicates "
            f"{self.n_duplicates}, quarantined {self.n_quarantined}",
            f"  version: added {self.n_added}, removed {self.n_removed}, unchanged "
            f"{self.n_unchanged}, members {self.n_members}",
        ]
        shown = self.reasons.most_common(SHOWN_REASONS)
        for reason, n in shown:
            out.append(f"  quarantined {n}: {reason}")
        if len(self.reasons) > len(shown):
            more = len(self.reasons) - len(shown)
            rows = sum(self.reasons.values()) - sum(n for _, n in shown)
            out.append(f"  +{more} more reason{'s' if more > 1 else ''} ({rows} rows): "
                       f"curator show -d {self.dataset} --quarantine lists them all")
        return out


def _batches(rows: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary ("malformed JSON: Expecting ',' ..." -> "malformed JSON",
    "not valid UTF-8 (byte 13)" -> "not valid UTF-8")."""
    for kind in ("malformed JSON", "not valid UTF-8", "lone surrogate", "unreadable file"):
        if reason.startswith(kind):
            return kind
    return reason


def clear_abandoned_staging(store: Store) -> None:
    """Drop staging and quarantine rows of ingests that are no longer running."""
    with store.atomic() as con:
        clear_stale_staging(con)


def ingest(store: Store, source: str, dataset: str, *, append: bool = False,
           fields: FieldMap | None = None, split: str = DEFAULT_SPLIT, message: str | None = None,
           batch_size: int = BATCH_SIZE, hub: bool = False,
           record_file: tuple[str, str] | None = None,
           progress: Callable[[int], None] | None = None) -> IngestSummary:
    """Ingest ``source`` as the next version of ``dataset``.

    Snapshot (default): the new version is exactly the input. ``append``: the new version
    is the previous version plus the input. ``hub``: ``source`` names a Hugging Face hub
    data set (as ``hub:NAME`` does). ``record_file`` (sha256, path): the input file is
    recorded as ingested in the transaction that creates the version, so a crash cannot
    leave a version whose file a rerun would ingest again. ``progress`` is called with rows
    read so far.
    """
    started = time.monotonic()
    try:
        files, rows = read_source(source, split, hub=hub)
    except InputError as exc:
        raise IngestError(str(exc)) from exc
    store.init()
    clear_abandoned_staging(store)
    run_id = store.start_run("ingest", dataset, {"source": source, "append": append,
                                                 "fields": vars(fields) if fields else None})
    summary = IngestSummary(dataset, 0, None, "append" if append else "snapshot", files)
    try:
        for batch in _batches(rows, batch_size):
            _stage_batch(store, run_id, dataset, batch, fields, summary)
            if progress:
                progress(summary.n_read)
        if summary.n_read == 0:
            raise IngestError(f"{source}: no rows found")
        if summary.n_accepted == 0:
            reasons = "; ".join(f"{n} {r}" for r, n in summary.reasons.most_common(3))
            raise IngestError(f"{source}: no usable rows ({summary.n_quarantined} quarantined: "
                              f"{reasons})")
        _commit_version(store, run_id, dataset, source, append, message, summary, record_file)
    except BaseException as exc:
        store.finish_run(run_id, "failed", error=str(exc) or type(exc).__name__)
        clear_abandoned_staging(store)
        if isinstance(exc, InputError):
            raise IngestError(str(exc)) from exc
        raise
    summary.seconds = time.monotonic() - started
    store.finish_run(run_id, "done", result={"version": summary.version,
                                             "accepted": summary.n_accepted,
                                             "quarantined": summary.n_quarantined})
    return summary


def _stage_batch(store: Store, run_id: str, dataset: str, batch: list[RawRow],
                 fields: FieldMap | None, summary: IngestSummary) -> None:
    samples: dict[str, tuple] = {}
    members: dict[str, tuple] = {}
    bad: list[tuple] = []
    for row in batch:
        summary.n_read += 1
        try:
            sample = sample_from_row(row, fields)
        except RowError as exc:
            reason = str(exc)
            bad.append((run_id, dataset, None, row.file, row.line, reason, row.raw))
            summary.n_quarantined += 1
            summary.reasons[_reason_kind(reason)] += 1
            continue
        sid, metadata = sample.sample_id, sample.metadata
        if sid in members:
            continue  # duplicate within this batch; counted after staging
        samples[sid] = (sid, json.dumps(list(sample.messages), ensure_ascii=False),
                        sample.prompt, sample.response,
                        len(sample.prompt) + len(sample.response))
        members[sid] = (run_id, sid, json.dumps(metadata, ensure_ascii=False, default=str)
                        if metadata else None, row.file, row.line)
    # The lock keeps two threads of this process from adding the same new sample at once
    # (other processes are kept out by DuckDB's file lock while this transaction runs).
    # Columns, not row dicts: pa.Table.from_pylist costs ~50x more per batch.
    with _WRITE_LOCK, store.atomic() as con:
        staged = stage_batch(
            con, run_id,
            _columns(samples.values(), _SAMPLE_SCHEMA) if samples else None,
            _columns(members.values(), _MEMBER_SCHEMA) if samples else None, bad)
        # Same transaction (nested atomic joins it): one open of the store per batch, not two.
        store.update_run(run_id, done=summary.n_read)
    summary.n_accepted += staged
    summary.n_duplicates = summary.n_read - summary.n_quarantined - summary.n_accepted


_SAMPLE_SCHEMA = pa.schema([("sample_id", pa.string()), ("messages", pa.string()),
                            ("prompt", pa.string()), ("response", pa.string()),
                            ("n_chars", pa.int64())])
_MEMBER_SCHEMA = pa.schema([("run_id", pa.string()), ("sample_id", pa.string()),
                            ("metadata", pa.string()), ("source_file", pa.string()),
                            ("source_line", pa.int64())])


def _columns(rows: Iterable[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                    schema=schema)


def _commit_version(store: Store, run_id: str, dataset: str, source: str, append: bool,
                    message: str | None, summary: IngestSummary,
                    record_file: tuple[str, str] | None = None) -> None:
    """One short transaction: the version row, its members, and the staged quarantine."""
    counts = VersionCounts(summary.mode, summary.n_read, summary.n_accepted,
                           summary.n_duplicates, summary.n_quarantined)
    with _WRITE_LOCK, store.atomic() as con:
        done = commit_version(con, run_id, dataset, source, append, message, counts,
                              record_file)
    summary.version, summary.parent = done.version, done.parent
    summary.n_added, summary.n_removed, summary.n_unchanged = done.n_added, done.n_removed, \
        done.n_unchanged
    summary.n_members = done.n_members
