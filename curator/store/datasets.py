"""Reading datasets, versions and samples out of the store."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from curator.records import Sample
from curator.store.db import Store
from curator.store.errors import NotFound


@dataclass(frozen=True)
class VersionInfo:
    dataset: str
    version: int
    parent: int | None
    mode: str
    source: str
    message: str | None
    n_read: int
    n_accepted: int
    n_duplicates: int
    n_quarantined: int
    n_added: int
    n_removed: int
    n_unchanged: int
    n_members: int
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class Diff:
    dataset: str
    old: int
    new: int
    n_added: int
    n_removed: int
    n_unchanged: int
    added: list[str] = field(default_factory=list)    # sample ids, at most `limit`
    removed: list[str] = field(default_factory=list)


_VERSION_COLS = ", ".join(VersionInfo.__dataclass_fields__)


def list_datasets(store: Store) -> list[dict[str, Any]]:
    return store.query_dicts(
        "SELECT d.name, d.created_at, count(v.version) AS n_versions, max(v.version) AS latest "
        "FROM datasets d LEFT JOIN versions v ON v.dataset = d.name "
        "GROUP BY d.name, d.created_at ORDER BY d.name")


def require_dataset(store: Store, dataset: str) -> None:
    if not store.query("SELECT 1 FROM datasets WHERE name = ?", [dataset]):
        known = [d["name"] for d in list_datasets(store)]
        hint = f" (known: {', '.join(known)})" if known else " (the store has no datasets yet)"
        raise NotFound(f"no dataset {dataset!r}{hint}")


def list_versions(store: Store, dataset: str) -> list[VersionInfo]:
    require_dataset(store, dataset)
    rows = store.query(f"SELECT {_VERSION_COLS} FROM versions WHERE dataset = ? ORDER BY version",
                       [dataset])
    return [VersionInfo(*r) for r in rows]


def resolve_version(store: Store, dataset: str, version: int | str | None = None) -> int:
    """A version number, or the latest for None / "latest"; NotFound with a hint otherwise."""
    require_dataset(store, dataset)
    if version is None or version == "latest":
        row = store.query("SELECT max(version) FROM versions WHERE dataset = ?", [dataset])
        if row[0][0] is None:
            raise NotFound(f"dataset {dataset!r} has no versions yet")
        return int(row[0][0])
    try:
        number = int(str(version).lstrip("v"))
    except ValueError as exc:
        raise NotFound(f"bad version {version!r}: use a number such as 2 or v2") from exc
    if not store.query("SELECT 1 FROM versions WHERE dataset = ? AND version = ?",
                       [dataset, number]):
        raise NotFound(f"dataset {dataset!r} has no version {number}")
    return number


def load_latest(store: Store, dataset: str) -> list[Sample]:
    """The samples of ``dataset``'s latest version (a target set is read this way)."""
    return load_samples(store, dataset, resolve_version(store, dataset, None))


def has_versions(store: Store, dataset: str) -> bool:
    return bool(store.query("SELECT 1 FROM versions WHERE dataset = ? LIMIT 1", [dataset]))


def latest_version(store: Store, dataset: str, source: str | None = None) -> int | None:
    """The newest version of ``dataset`` (made from ``source``), or None when there is none."""
    sql, params = "SELECT max(version) FROM versions WHERE dataset = ?", [dataset]
    if source is not None:
        sql += " AND source = ?"
        params.append(source)
    rows = store.query(sql, params)
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def count_new_members(store: Store, dataset: str, old: int, new: int) -> int:
    """Members of version ``new`` that version ``old`` did not have."""
    return int(store.query(
        "SELECT count(*) FROM version_members n ANTI JOIN (SELECT sample_id FROM "
        "version_members WHERE dataset = ? AND version = ?) p USING (sample_id) "
        "WHERE n.dataset = ? AND n.version = ?", [dataset, old, dataset, new])[0][0])


def get_version(store: Store, dataset: str, version: int | str | None = None) -> VersionInfo:
    number = resolve_version(store, dataset, version)
    row = store.query(f"SELECT {_VERSION_COLS} FROM versions WHERE dataset = ? AND version = ?",
                      [dataset, number])
    return VersionInfo(*row[0])


def version_sample_ids(store: Store, dataset: str, version: int) -> list[str]:
    """Member ids in a stable order (by source file and line, then id)."""
    rows = store.query(
        "SELECT sample_id FROM version_members WHERE dataset = ? AND version = ? "
        "ORDER BY source_file, source_line, sample_id", [dataset, version])
    return [r[0] for r in rows]


def _row_to_sample(row: Sequence[Any]) -> Sample:
    sample_id, messages, prompt, response, metadata = row
    return Sample(sample_id, tuple(json.loads(messages)), prompt, response,
                  json.loads(metadata) if metadata else {})


def contains_pattern(text: str) -> str:
    """An ILIKE pattern (with ``ESCAPE '!'``) matching values that contain ``text`` literally:
    ``%`` and ``_`` in a search are characters to find, not wildcards."""
    return "%" + "".join("!" + c if c in "!%_" else c for c in text) + "%"


def count_samples(store: Store, dataset: str, version: int, search: str | None = None) -> int:
    """How many of a version's samples ``load_samples`` would list without a limit."""
    sql = ("SELECT count(*) FROM version_members m JOIN samples s USING (sample_id) "
           "WHERE m.dataset = ? AND m.version = ?")
    params: list[Any] = [dataset, version]
    if search:
        sql += " AND (s.prompt ILIKE ? ESCAPE '!' OR s.response ILIKE ? ESCAPE '!')"
        params += [contains_pattern(search)] * 2
    return int(store.query(sql, params)[0][0])


def load_samples(store: Store, dataset: str, version: int, *, limit: int | None = None,
                 offset: int = 0, search: str | None = None) -> list[Sample]:
    """A version's samples with their membership metadata, in stable order (paged)."""
    sql = ("SELECT s.sample_id, s.messages, s.prompt, s.response, m.metadata "
           "FROM version_members m JOIN samples s USING (sample_id) "
           "WHERE m.dataset = ? AND m.version = ?")
    params: list[Any] = [dataset, version]
    if search:
        sql += " AND (s.prompt ILIKE ? ESCAPE '!' OR s.response ILIKE ? ESCAPE '!')"
        params += [contains_pattern(search)] * 2
    sql += " ORDER BY m.source_file, m.source_line, s.sample_id"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    return [_row_to_sample(r) for r in store.query(sql, params)]


def iter_samples(store: Store, dataset: str, version: int,
                 batch_size: int = 10_000) -> Iterator[list[Sample]]:
    """Batches of a version's samples; each batch is its own short read."""
    offset = 0
    while True:
        batch = load_samples(store, dataset, version, limit=batch_size, offset=offset)
        if not batch:
            return
        yield batch
        offset += len(batch)


def get_samples(store: Store, sample_ids: Sequence[str]) -> dict[str, Sample]:
    """Samples by id (without membership metadata)."""
    if not sample_ids:
        return {}
    with store.connect() as con:
        con.execute("CREATE OR REPLACE TEMP TABLE _wanted (sample_id TEXT)")
        con.executemany("INSERT INTO _wanted VALUES (?)", [[i] for i in sample_ids])
        rows = con.execute(
            "SELECT s.sample_id, s.messages, s.prompt, s.response, NULL FROM samples s "
            "JOIN _wanted w USING (sample_id)").fetchall()
        con.execute("DROP TABLE _wanted")
    return {r[0]: _row_to_sample(r) for r in rows}


def diff_versions(store: Store, dataset: str, old: int | str | None, new: int | str | None,
                  limit: int = 20) -> Diff:
    """What changed from version ``old`` to ``new`` (counts, and up to ``limit`` ids each)."""
    a = resolve_version(store, dataset, old)
    b = resolve_version(store, dataset, new)
    members = ("(SELECT sample_id FROM version_members WHERE dataset = ? AND version = ?)")
    with store.connect() as con:
        n_added, n_removed, n_unchanged = con.execute(
            f"""
            WITH a AS {members}, b AS {members}
            SELECT
              (SELECT count(*) FROM b ANTI JOIN a USING (sample_id)),
              (SELECT count(*) FROM a ANTI JOIN b USING (sample_id)),
              (SELECT count(*) FROM a SEMI JOIN b USING (sample_id))
            """, [dataset, a, dataset, b]).fetchone()
        added = [r[0] for r in con.execute(
            f"WITH a AS {members}, b AS {members} "
            "SELECT sample_id FROM b ANTI JOIN a USING (sample_id) ORDER BY sample_id LIMIT ?",
            [dataset, a, dataset, b, limit]).fetchall()]
        removed = [r[0] for r in con.execute(
            f"WITH a AS {members}, b AS {members} "
            "SELECT sample_id FROM a ANTI JOIN b USING (sample_id) ORDER BY sample_id LIMIT ?",
            [dataset, a, dataset, b, limit]).fetchall()]
    return Diff(dataset, a, b, n_added, n_removed, n_unchanged, added, removed)


def _quarantine_where(dataset: str, version: int | None,
                      search: str | None) -> tuple[str, list[Any]]:
    sql = " FROM quarantine WHERE dataset = ? AND version IS NOT NULL"
    params: list[Any] = [dataset]
    if version is not None:
        sql += " AND version = ?"
        params.append(version)
    if search:
        # Literal text in the row as read or in the reason (the file name is shown anyway).
        sql += " AND (raw ILIKE ? ESCAPE '!' OR reason ILIKE ? ESCAPE '!')"
        params += [contains_pattern(search)] * 2
    return sql, params


def quarantine_rows(store: Store, dataset: str, version: int | None = None,
                    limit: int = 1000, offset: int = 0,
                    search: str | None = None) -> list[dict[str, Any]]:
    where, params = _quarantine_where(dataset, version, search)
    sql = ("SELECT version, source_file, line, reason, raw" + where
           + " ORDER BY version, source_file, line LIMIT ? OFFSET ?")
    return store.query_dicts(sql, [*params, limit, offset])


def count_quarantine(store: Store, dataset: str, version: int | None = None,
                     search: str | None = None) -> int:
    """How many rows ``quarantine_rows`` would list without a limit."""
    where, params = _quarantine_where(dataset, version, search)
    return int(store.query("SELECT count(*)" + where, params)[0][0])
