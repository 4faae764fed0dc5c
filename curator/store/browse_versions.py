"""The app's reads of a version's samples: pages under a filter, metadata fields and
values, lengths, stored per-sample scores, diffs between versions, quarantine reasons, and
one sample in full.

Paged, filtered and aggregated in the database (filters: ``browse_filters``), so a page
gets only what it shows.
"""

from __future__ import annotations

import json
from typing import Any

from curator.store import Store
from curator.store.browse_filters import (
    SampleFilter,
    ScoreSource,
    filtered_members_sql,
    json_key,
    preview,
)


def score_sources(store: Store, dataset: str, version: int) -> list[ScoreSource]:
    """Stored per-sample scores that cover some of this version's members."""
    members = "(SELECT sample_id FROM version_members WHERE dataset = ? AND version = ?)"
    rows = store.query(
        f"SELECT 'loss', model, config, count(*) FROM losses WHERE valid AND sample_id IN "
        f"{members} GROUP BY model, config "
        f"UNION ALL SELECT 'gradient', model, config, count(*) FROM gradient_scores "
        f"WHERE layer = '' AND sample_id IN {members} GROUP BY model, config "
        "ORDER BY 1, 4 DESC", [dataset, version, dataset, version])
    return [ScoreSource(k, m, c, int(n)) for k, m, c, n in rows]


def metadata_keys(store: Store, dataset: str, version: int, scan: int = 2000) -> list[str]:
    """Metadata keys seen in the first ``scan`` members (enough to offer filters)."""
    rows = store.query(
        "SELECT DISTINCT unnest(json_keys(metadata)) FROM (SELECT metadata FROM "
        "version_members WHERE dataset = ? AND version = ? AND metadata IS NOT NULL LIMIT ?)",
        [dataset, version, scan])
    return sorted(r[0] for r in rows)


def metadata_counts(store: Store, dataset: str, version: int, key: str,
                    limit: int = 100) -> list[tuple[str, int]]:
    """(value, count) of one metadata key over a version, most common first."""
    rows = store.query(
        "SELECT json_extract_string(metadata, '$.' || ?) AS v, count(*) AS n "
        "FROM version_members WHERE dataset = ? AND version = ? GROUP BY v "
        "ORDER BY n DESC, v LIMIT ?", [json_key(key), dataset, version, limit])
    return [("(none)" if v is None else v, int(n)) for v, n in rows]


def metadata_values(store: Store, dataset: str, version: int,
                    per_key: int = 50) -> list[tuple[str, str, int]]:
    """(field, value, count) for every metadata field of a version, each field's most
    common ``per_key`` values, for filters on several fields at once."""
    out: list[tuple[str, str, int]] = []
    for key in metadata_keys(store, dataset, version):
        out += [(key, v, n) for v, n in metadata_counts(store, dataset, version, key, per_key)]
    return out


def score_range(store: Store, dataset: str, version: int,
                source: ScoreSource) -> tuple[float, float] | None:
    """(min, max) of a stored score over a version's members, None when none has one."""
    f = SampleFilter(score=source)
    inner, params = filtered_members_sql(dataset, version, f)
    row = store.query(f"SELECT min(score), max(score) FROM ({inner})", params)[0]
    return None if row[0] is None else (float(row[0]), float(row[1]))


def length_range(store: Store, dataset: str, version: int) -> tuple[int, int]:
    row = store.query(
        "SELECT min(s.n_chars), max(s.n_chars) FROM version_members m JOIN samples s "
        "USING (sample_id) WHERE m.dataset = ? AND m.version = ?", [dataset, version])[0]
    return (int(row[0] or 0), int(row[1] or 0))


def sample_page(store: Store, dataset: str, version: int, f: SampleFilter | None = None,
                limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of a version's samples matching ``f`` (stable order) and the match count."""
    f = f or SampleFilter()
    inner, params = filtered_members_sql(dataset, version, f)
    sql = (f"SELECT *, count(*) OVER () AS n_total FROM ({inner}) "
           "ORDER BY source_file, source_line, sample_id LIMIT ? OFFSET ?")
    rows = store.query_dicts(sql, params + [limit, offset])
    total = int(rows[0]["n_total"]) if rows else (
        0 if offset == 0 else int(store.query(f"SELECT count(*) FROM ({inner})", params)[0][0]))
    out = []
    for r in rows:
        meta = json.loads(r["metadata"]) if r["metadata"] else {}
        out.append({"sample_id": r["sample_id"], "prompt": preview(r["prompt"]),
                    "response": preview(r["response"]), "chars": r["n_chars"],
                    "score": r["score"], "metadata": meta})
    return out, total


def length_histogram(store: Store, dataset: str, version: int, bins: int = 30,
                     bounds: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Sample lengths binned in the database: [{"chars": lower edge, "samples": n}].
    ``bounds``: the version's (min, max) length when the caller has it already."""
    lo, hi = bounds or length_range(store, dataset, version)
    width = max(1, -(-(hi - lo + 1) // bins))
    rows = store.query(
        "SELECT (s.n_chars - ?) // ? AS b, count(*) FROM version_members m JOIN samples s "
        "USING (sample_id) WHERE m.dataset = ? AND m.version = ? GROUP BY b ORDER BY b",
        [lo, width, dataset, version])
    return [{"chars": lo + int(b) * width, "samples": int(n)} for b, n in rows]


def diff_page(store: Store, dataset: str, old: int, new: int, which: str = "added",
              limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Samples added in ``new`` (or removed since ``old``), paged, with previews."""
    if which not in ("added", "removed"):
        raise ValueError("which must be 'added' or 'removed'")
    keep, drop = (new, old) if which == "added" else (old, new)
    rows = store.query(
        "SELECT k.sample_id, s.prompt, s.response, s.n_chars FROM version_members k "
        "JOIN samples s USING (sample_id) WHERE k.dataset = ? AND k.version = ? AND NOT EXISTS "
        "(SELECT 1 FROM version_members d WHERE d.dataset = ? AND d.version = ? AND "
        "d.sample_id = k.sample_id) ORDER BY k.sample_id LIMIT ? OFFSET ?",
        [dataset, keep, dataset, drop, limit, offset])
    return [{"sample_id": r[0], "prompt": preview(r[1]), "response": preview(r[2]),
             "chars": r[3]} for r in rows]


def quarantine_reasons(store: Store, dataset: str,
                       version: int | None = None) -> list[tuple[str, int]]:
    sql = "SELECT reason, count(*) FROM quarantine WHERE dataset = ? AND version IS NOT NULL"
    params: list[Any] = [dataset]
    if version is not None:
        sql += " AND version = ?"
        params.append(version)
    return [(r, int(n)) for r, n in store.query(sql + " GROUP BY reason ORDER BY 2 DESC",
                                                params)]


def sample_detail(store: Store, sample_id: str) -> dict[str, Any] | None:
    """A sample's full text and messages, and the versions it belongs to."""
    with store.connect() as con:
        row = con.execute("SELECT sample_id, messages, prompt, response, n_chars FROM samples "
                          "WHERE sample_id = ?", [sample_id]).fetchone()
        if row is None:
            return None
        versions = con.execute(
            "SELECT dataset, version, metadata FROM version_members WHERE sample_id = ? "
            "ORDER BY dataset, version", [sample_id]).fetchall()
    return {"sample_id": row[0], "messages": json.loads(row[1]), "prompt": row[2],
            "response": row[3], "chars": row[4],
            "versions": [{"dataset": d, "version": v,
                          "metadata": json.loads(m) if m else {}} for d, v, m in versions]}
