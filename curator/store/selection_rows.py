"""Selections as first-class records: who picked what, with which method, and why."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from curator.store.db import Store
from curator.store.errors import NotFound


@dataclass
class SelectionRecord:
    """What is stored about a selection (members are stored separately)."""

    dataset: str
    version: int
    stage: str
    method: str
    budget: str
    n_pool: int
    n_selected: int
    function: str | None = None
    objective: float | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    target: str | None = None
    run_id: str | None = None
    seconds: float | None = None
    selection_id: str | None = None
    created_at: datetime | None = None


_COLS = ("selection_id", "dataset", "version", "stage", "method", "function", "budget",
         "n_pool", "n_selected", "objective", "model", "config", "parent", "target", "run_id",
         "seconds", "created_at")


def _next_id(con: Any) -> str:
    n = con.execute("SELECT count(*) FROM selections").fetchone()[0]
    while True:
        n += 1
        candidate = f"sel-{n:04d}"
        if not con.execute("SELECT 1 FROM selections WHERE selection_id = ?",
                           [candidate]).fetchone():
            return candidate


def save_selection(store: Store, record: SelectionRecord, sample_ids: Sequence[str],
                   gains: Sequence[float] | None = None, scores: Sequence[float] | None = None,
                   layers: Mapping[str, Sequence[str]] | None = None,
                   pool: Sequence[str] | None = None) -> str:
    """Store a selection and its members in pick order; return its id.

    ``layers`` (GAST) maps a layer name to that layer's own member ids; ``pool`` is the
    ids of the candidates it was chosen from, in the ranker's order (stored in the same
    transaction; ``selection_pool_ids`` reads it back).
    """
    if gains is not None and len(gains) != len(sample_ids):
        raise ValueError("gains and sample_ids differ in length")
    if scores is not None and len(scores) != len(sample_ids):
        raise ValueError("scores and sample_ids differ in length")
    with store.atomic() as con:
        sid = record.selection_id or _next_id(con)
        con.execute(
            f"INSERT INTO selections ({', '.join(_COLS[:-1])}) VALUES "
            f"({', '.join('?' * (len(_COLS) - 1))})",
            [sid, record.dataset, record.version, record.stage, record.method, record.function,
             record.budget, record.n_pool, record.n_selected, record.objective, record.model,
             json.dumps(record.config, default=str), record.parent, record.target,
             record.run_id, record.seconds])
        rows = [(sid, "", s, rank, None if gains is None else float(gains[rank]),
                 None if scores is None else float(scores[rank]))
                for rank, s in enumerate(sample_ids)]
        for layer, ids in (layers or {}).items():
            rows += [(sid, layer, s, rank, None, None) for rank, s in enumerate(ids)]
        if rows:
            con.executemany("INSERT INTO selection_members VALUES (?, ?, ?, ?, ?, ?)", rows)
        if pool:
            # one statement from a list parameter: row by row, 200k ids take minutes
            con.execute("INSERT INTO selection_pools SELECT ?, unnest(ids), "
                        "generate_subscripts(ids, 1) - 1 FROM (SELECT ?::VARCHAR[] AS ids)",
                        [sid, list(pool)])
    record.selection_id = sid
    return sid


def _record(row: Sequence[Any]) -> SelectionRecord:
    d = dict(zip(_COLS, row, strict=True))
    d["config"] = json.loads(d["config"]) if d["config"] else {}
    return SelectionRecord(**d)


def list_selections(store: Store, dataset: str | None = None) -> list[SelectionRecord]:
    sql = f"SELECT {', '.join(_COLS)} FROM selections"
    params: list[Any] = []
    if dataset:
        sql += " WHERE dataset = ?"
        params.append(dataset)
    return [_record(r) for r in store.query(sql + " ORDER BY created_at, selection_id", params)]


def get_selection(store: Store, selection_id: str) -> SelectionRecord:
    rows = store.query(f"SELECT {', '.join(_COLS)} FROM selections WHERE selection_id = ?",
                       [selection_id])
    if not rows:
        raise NotFound(f"no selection {selection_id!r} (see `curator selections`)")
    return _record(rows[0])


def latest_selection(store: Store, dataset: str, stage: str | None = None,
                     before_version: int | None = None) -> SelectionRecord:
    """The newest selection of ``dataset`` (of ``stage``; made on a version older than
    ``before_version``)."""
    sql = f"SELECT {', '.join(_COLS)} FROM selections WHERE dataset = ?"
    params: list[Any] = [dataset]
    if stage:
        sql += " AND stage = ?"
        params.append(stage)
    if before_version is not None:
        sql += " AND version < ?"
        params.append(before_version)
    rows = store.query(sql + " ORDER BY created_at DESC, selection_id DESC LIMIT 1", params)
    if not rows:
        raise NotFound(f"dataset {dataset!r} has no selection"
                       + (f" for stage {stage}" if stage else "")
                       + (f" before version {before_version}" if before_version else ""))
    return _record(rows[0])


def find_selection(store: Store, dataset: str, spec_hash: str) -> SelectionRecord | None:
    """The newest selection of ``dataset`` made from exactly these inputs, if any."""
    rows = store.query(f"SELECT {', '.join(_COLS)} FROM selections WHERE dataset = ? AND "
                       "json_extract_string(config, '$.spec_hash') = ? ORDER BY created_at "
                       "DESC LIMIT 1", [dataset, spec_hash])
    return _record(rows[0]) if rows else None


def selection_members(store: Store, selection_id: str, layer: str = "",
                      limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    sql = ("SELECT m.rank, m.sample_id, m.gain, m.score, s.prompt, s.response "
           "FROM selection_members m JOIN samples s USING (sample_id) "
           "WHERE m.selection_id = ? AND m.layer = ? ORDER BY m.rank")
    params: list[Any] = [selection_id, layer]
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    return store.query_dicts(sql, params)


def selection_sample_ids(store: Store, selection_id: str, layer: str = "") -> list[str]:
    return [r[0] for r in store.query(
        "SELECT sample_id FROM selection_members WHERE selection_id = ? AND layer = ? "
        "ORDER BY rank", [selection_id, layer])]


def selection_pool_sql(store: Store, sel: SelectionRecord) -> tuple[str, list[Any]]:
    """A subquery of the sample ids ``sel`` was chosen from: its stored pool; for a
    selection made before pools were stored (migration 8), the pool rebuilt from the
    version, the parent and the trash recorded in its config."""
    if store.query("SELECT 1 FROM selection_pools WHERE selection_id = ? LIMIT 1",
                   [sel.selection_id]):
        return "SELECT sample_id FROM selection_pools WHERE selection_id = ?", \
            [sel.selection_id]
    return _rebuilt_pool_sql(sel)


def selection_pool_ids(store: Store, selection_id: str) -> list[str]:
    """The ids ``selection_id`` was chosen from (stored order; a rebuilt pool by id)."""
    rows = store.query("SELECT sample_id FROM selection_pools WHERE selection_id = ? "
                       "ORDER BY position", [selection_id])
    if rows:
        return [r[0] for r in rows]
    sql, params = _rebuilt_pool_sql(get_selection(store, selection_id))
    return [r[0] for r in store.query(sql + " ORDER BY sample_id", params)]


def _rebuilt_pool_sql(sel: SelectionRecord) -> tuple[str, list[Any]]:
    """The version's members, less (for the continual stage) what the parent had seen: its
    version's members (pool "new") or its picks (pool "all"), less the trashed samples."""
    sql = "SELECT sample_id FROM version_members WHERE dataset = ? AND version = ?"
    params: list[Any] = [sel.dataset, sel.version]
    if sel.stage == "continual" and sel.parent:
        parent = sel.parent
        if (sel.config or {}).get("pool", "new") == "all":
            sql += (" AND sample_id NOT IN (SELECT sample_id FROM selection_members WHERE "
                    "selection_id = ? AND layer = '')")
            params.append(parent)
        else:
            sql += (" AND sample_id NOT IN (SELECT pm.sample_id FROM version_members pm JOIN "
                    "selections p ON pm.dataset = p.dataset AND pm.version = p.version "
                    "WHERE p.selection_id = ?)")
            params.append(parent)
    trashed = (sel.config or {}).get("trashed")
    if trashed:
        # In the trash when the selection was made: not in its pool (the target set's own
        # trashed ids are in the list too, and are not members of this dataset).
        sql += " AND sample_id NOT IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(trashed))
    return sql, params


def selection_layers(store: Store, selection_id: str) -> dict[str, list[str]]:
    """Layer-wise subsets (GAST): layer name -> member ids in rank order."""
    out: dict[str, list[str]] = {}
    for layer, sample_id in store.query(
            "SELECT layer, sample_id FROM selection_members WHERE selection_id = ? AND "
            "layer <> '' ORDER BY layer, rank", [selection_id]):
        out.setdefault(layer, []).append(sample_id)
    return out


def selection_layer_scores(store: Store, selection_id: str) -> dict[str, dict[str, float]]:
    """GAST: layer name -> {member id: that layer's score} for the members each layer
    scored, in member rank order; {} for a selection that stored no per-layer scores (any
    other method, and GAST selections made before they were stored)."""
    sel = get_selection(store, selection_id)
    key = sel.config.get("layer_scores") if isinstance(sel.config, dict) else None
    if not key or not sel.model:
        return {}
    out: dict[str, dict[str, float]] = {}
    for layer, sample_id, score in store.query(
            "SELECT g.layer, g.sample_id, g.score FROM gradient_scores g JOIN "
            "selection_members m ON m.sample_id = g.sample_id AND m.selection_id = ? AND "
            "m.layer = '' WHERE g.model = ? AND g.config = ? AND g.layer <> '' "
            "ORDER BY g.layer, m.rank", [selection_id, sel.model, key]):
        out.setdefault(layer, {})[sample_id] = float(score)
    return out


def save_mask_record(store: Store, selection_id: str, model: str, path: str, sha256: str,
                     density: float, n_params: int, n_kept: int,
                     info: Mapping[str, Any]) -> None:
    with store.atomic() as con:
        con.execute("INSERT OR REPLACE INTO masks (selection_id, model, path, sha256, density, "
                    "n_params, n_kept, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [selection_id, model, path, sha256, density, n_params, n_kept,
                     json.dumps(info)])


def get_mask_record(store: Store, selection_id: str) -> dict[str, Any] | None:
    rows = store.query_dicts("SELECT * FROM masks WHERE selection_id = ?", [selection_id])
    if not rows:
        return None
    row = rows[0]
    row["info"] = json.loads(row["info"]) if row["info"] else {}
    return row
