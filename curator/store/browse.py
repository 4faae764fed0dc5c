"""Read-only queries for the app: paged, filtered, aggregated in the database.

Every function opens the store for one short read (``Store.connect``), takes parameters
only (no SQL is built from user text), and returns plain Python or numpy values that are
small enough to send to a browser: pages of rows, counts, histograms, samples of points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from curator.config import config_hash
from curator.store import Store
from curator.store.selections import (
    SelectionRecord,
    get_selection,
    selection_pool_sql,
)
from curator.vocabulary import GRADIENT_METHODS

PREVIEW_CHARS = 160


def _preview(text: str | None, n: int = PREVIEW_CHARS) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


# -- the store as a whole -----------------------------------------------------------------

def store_summary(store: Store) -> dict[str, int]:
    """Counts for the overview: datasets, versions, distinct samples, selections, masks."""
    with store.connect() as con:
        row = con.execute(
            "SELECT (SELECT count(*) FROM datasets), (SELECT count(*) FROM versions), "
            "(SELECT count(*) FROM samples), (SELECT count(*) FROM selections), "
            "(SELECT count(*) FROM masks), (SELECT count(*) FROM runs WHERE status = 'running')"
        ).fetchone()
    keys = ("datasets", "versions", "samples", "selections", "masks", "running")
    return dict(zip(keys, (int(x) for x in row), strict=True))


def is_empty(store: Store) -> bool:
    """True when the store file is missing or holds no dataset."""
    if not store.exists:
        return True
    return not store.query("SELECT 1 FROM datasets LIMIT 1")


# what a finished run's result counts, in words (runs that count no steps record these)
RESULT_COUNTS = {"accepted": "rows accepted", "quarantined": "quarantined", "n_rows": "rows",
                 "pairs": "pairs", "version": "version"}


def recent_runs(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """Newest runs with their status and progress in words (no config blobs): "done of
    total" while counted, else what the result counts ("90 rows", "12 pairs")."""
    rows = store.query_dicts(
        "SELECT run_id, kind, dataset, status, done, total, error, started_at, finished_at, "
        "result FROM runs ORDER BY started_at DESC LIMIT ?", [limit])
    for r in rows:
        result = json.loads(r.pop("result") or "null")
        r["progress"] = run_progress(r["status"], r.pop("done"), r.pop("total"), result)
    return rows


def run_progress(status: str, done: int | None, total: int | None, result: Any) -> str:
    if total:
        return f"{done or 0:,} of {total:,}"
    counted = [f"v{v}" if k == "version" else f"{v:,} {word}"
               for k, word in RESULT_COUNTS.items()
               if isinstance(result, dict) and isinstance(v := result.get(k), int)]
    if counted:
        return ", ".join(counted)
    if done:
        return f"{done:,}"
    return "finished" if status == "done" else ""


# -- a version's samples ------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreSource:
    """A per-sample number stored for a model and config: ``kind`` is loss or gradient."""

    kind: str
    model: str
    config: str
    n: int

    @property
    def label(self) -> str:
        name = "loss d(i)" if self.kind == "loss" else "gradient score"
        return f"{name} · {self.model[:10]} · {self.config[:8]} ({self.n:,} samples)"


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
        "ORDER BY n DESC, v LIMIT ?", [_json_key(key), dataset, version, limit])
    return [("(none)" if v is None else v, int(n)) for v, n in rows]


def _json_key(key: str) -> str:
    # Quoted JSON path member: any key, no injection (it is a bound parameter anyway).
    return json.dumps(key)


def score_range(store: Store, dataset: str, version: int,
                source: ScoreSource) -> tuple[float, float] | None:
    """(min, max) of a stored score over a version's members, None when none has one."""
    f = SampleFilter(score=source)
    inner, params = _filtered_members(dataset, version, f)
    row = store.query(f"SELECT min(score), max(score) FROM ({inner})", params)[0]
    return None if row[0] is None else (float(row[0]), float(row[1]))


def length_range(store: Store, dataset: str, version: int) -> tuple[int, int]:
    row = store.query(
        "SELECT min(s.n_chars), max(s.n_chars) FROM version_members m JOIN samples s "
        "USING (sample_id) WHERE m.dataset = ? AND m.version = ?", [dataset, version])[0]
    return (int(row[0] or 0), int(row[1] or 0))


@dataclass
class SampleFilter:
    search: str | None = None
    meta_key: str | None = None
    meta_value: str | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    score: ScoreSource | None = None
    min_score: float | None = None
    max_score: float | None = None
    # more metadata conditions, (field, value) pairs: values of one field are alternatives,
    # different fields must all hold ("(none)": the field is missing)
    where: tuple[tuple[str, str], ...] = ()


def _metadata_where(column: str, where: tuple[tuple[str, str], ...]) -> tuple[str, list[Any]]:
    """`` AND (...)`` clauses for (field, value) conditions on the JSON ``column``: one
    clause per field (its values OR-ed), the fields AND-ed; keys and values are parameters."""
    by_key: dict[str, list[str]] = {}
    for key, value in where:
        by_key.setdefault(key, []).append(value)
    sql, params = "", []
    for key, values in by_key.items():
        alts = []
        for value in values:
            if value == "(none)":
                alts.append(f"json_extract_string({column}, '$.' || ?) IS NULL")
                params.append(_json_key(key))
            else:
                alts.append(f"json_extract_string({column}, '$.' || ?) = ?")
                params += [_json_key(key), value]
        sql += " AND (" + " OR ".join(alts) + ")"
    return sql, params


def _like(text: str) -> str:
    """A case-insensitive ``ILIKE ... ESCAPE '!'`` pattern that finds ``text`` anywhere."""
    return "%" + "".join("!" + c if c in "!%_" else c for c in text) + "%"


def _filtered_members(dataset: str, version: int, f: SampleFilter) -> tuple[str, list[Any]]:
    """FROM/WHERE over a version's members with the filter applied (score column `score`)."""
    params: list[Any] = []
    score_join = ", NULL::DOUBLE AS score"
    join, score_col = "", "NULL"
    if f.score is not None:
        table = "losses" if f.score.kind == "loss" else "gradient_scores"
        col = "distance" if f.score.kind == "loss" else "score"
        extra = "" if f.score.kind == "loss" else " AND g.layer = ''"
        score_col = f"g.{col}"
        score_join = f", {score_col} AS score"
        join = (f" LEFT JOIN {table} g ON g.sample_id = m.sample_id AND g.model = ? "
                f"AND g.config = ?{extra}")
        params += [f.score.model, f.score.config]
    sql = (f"SELECT m.sample_id, s.prompt, s.response, s.n_chars, m.metadata, m.source_file, "
           f"m.source_line{score_join} FROM version_members m JOIN samples s "
           f"USING (sample_id){join} WHERE m.dataset = ? AND m.version = ?")
    params += [dataset, version]
    if f.search:
        sql += " AND (s.prompt ILIKE ? ESCAPE '!' OR s.response ILIKE ? ESCAPE '!')"
        params += [_like(f.search), _like(f.search)]
    if f.meta_key and f.meta_value is not None:
        if f.meta_value == "(none)":
            sql += " AND json_extract_string(m.metadata, '$.' || ?) IS NULL"
            params.append(_json_key(f.meta_key))
        else:
            sql += " AND json_extract_string(m.metadata, '$.' || ?) = ?"
            params += [_json_key(f.meta_key), f.meta_value]
    if f.where:
        more, more_params = _metadata_where("m.metadata", f.where)
        sql += more
        params += more_params
    if f.min_chars is not None:
        sql += " AND s.n_chars >= ?"
        params.append(f.min_chars)
    if f.max_chars is not None:
        sql += " AND s.n_chars <= ?"
        params.append(f.max_chars)
    if f.score is not None and f.min_score is not None:
        sql += f" AND {score_col} >= ?"
        params.append(f.min_score)
    if f.score is not None and f.max_score is not None:
        sql += f" AND {score_col} <= ?"
        params.append(f.max_score)
    return sql, params


def sample_page(store: Store, dataset: str, version: int, f: SampleFilter | None = None,
                limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of a version's samples matching ``f`` (stable order) and the match count."""
    f = f or SampleFilter()
    inner, params = _filtered_members(dataset, version, f)
    sql = (f"SELECT *, count(*) OVER () AS n_total FROM ({inner}) "
           "ORDER BY source_file, source_line, sample_id LIMIT ? OFFSET ?")
    rows = store.query_dicts(sql, params + [limit, offset])
    total = int(rows[0]["n_total"]) if rows else (
        0 if offset == 0 else int(store.query(f"SELECT count(*) FROM ({inner})", params)[0][0]))
    out = []
    for r in rows:
        meta = json.loads(r["metadata"]) if r["metadata"] else {}
        out.append({"sample_id": r["sample_id"], "prompt": _preview(r["prompt"]),
                    "response": _preview(r["response"]), "chars": r["n_chars"],
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


# -- versions: diff -----------------------------------------------------------------------

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
    return [{"sample_id": r[0], "prompt": _preview(r[1]), "response": _preview(r[2]),
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


# -- selections ---------------------------------------------------------------------------

def _scored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A selection's config as its ranker saw it when it stored gradient scores: the
    stage layer adds the quality prior's record ("quality") after ranking."""
    return {k: v for k, v in config.items() if k != "quality"}


def gradient_config(sel: SelectionRecord) -> str | None:
    """The config key under which a gradient method stored its per-sample scores."""
    if sel.method not in GRADIENT_METHODS:
        return None
    return config_hash([sel.method, _scored_config(sel.config or {})])


def selection_score_options(store: Store, selection_id: str) -> list[str]:
    """Names of the per-sample values whose distributions this selection can show."""
    sel = get_selection(store, selection_id)
    names = ["length (chars)"]
    if sel.model and (sel.config or {}).get("utility_config"):
        names += ["loss d(i)", "utility as an example (mean)"]
    if gradient_config(sel):
        names.append("gradient score")
    return names


def _pool_values_sql(store: Store, sel: SelectionRecord, name: str) -> tuple[str, list[Any]]:
    """SQL for (sample_id, v, picked, rank) over the selection's pool: the value of score
    ``name`` for each pool sample that has one, and whether and where it was picked."""
    pool, params = selection_pool_sql(store, sel)
    if name == "length (chars)":
        value_sql, vparams = "SELECT sample_id, n_chars::DOUBLE AS v FROM samples", []
    elif name == "loss d(i)":
        value_sql = ("SELECT sample_id, distance AS v FROM losses WHERE valid AND model = ? "
                     "AND config = ?")
        vparams = [sel.model, sel.config.get("utility_config")]
    elif name == "utility as an example (mean)":
        value_sql = ("SELECT example_id AS sample_id, avg(utility) AS v FROM utilities WHERE "
                     "valid AND model = ? AND config = ? GROUP BY example_id")
        vparams = [sel.model, sel.config.get("utility_config")]
    elif name == "gradient score":
        value_sql = ("SELECT sample_id, score AS v FROM gradient_scores WHERE layer = '' AND "
                     "model = ? AND config = ?")
        vparams = [sel.model, gradient_config(sel)]
    else:
        raise ValueError(f"unknown score {name!r}")
    sql = (f"WITH pool AS ({pool}), val AS ({value_sql}) "
           "SELECT p.sample_id, v.v, (sm.sample_id IS NOT NULL) AS picked, sm.rank FROM pool p "
           "JOIN val v USING (sample_id) LEFT JOIN selection_members sm ON "
           "sm.selection_id = ? AND sm.layer = '' AND sm.sample_id = p.sample_id "
           "WHERE v.v IS NOT NULL")
    return sql, params + vparams + [sel.selection_id]


def selection_score_values(store: Store, selection_id: str,
                           name: str) -> dict[str, np.ndarray]:
    """Values of ``name`` over the selection's pool, split into selected / not selected."""
    sql, params = _pool_values_sql(store, get_selection(store, selection_id), name)
    with store.connect() as con:
        rows = con.execute(f"SELECT v, picked FROM ({sql})", params).fetchnumpy()
    values = np.asarray(rows["v"], dtype=float)
    picked = np.asarray(rows["picked"], dtype=bool)
    return {"selected": values[picked], "not selected": values[~picked]}


def samples_in_score_range(store: Store, selection_id: str, name: str, lo: float, hi: float,
                           limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """The pool samples whose score ``name`` lies in [lo, hi] (a range brushed on the
    histogram), lowest value first: how many there are (selected or not) and one page."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"score range [{lo}, {hi}] is not finite")
    lo, hi = min(lo, hi), max(lo, hi)
    sql, params = _pool_values_sql(store, get_selection(store, selection_id), name)
    with store.connect() as con:
        counts = con.execute(f"SELECT count(*) FILTER (WHERE picked), count(*) FROM ({sql}) "
                             "WHERE v BETWEEN ? AND ?", params + [lo, hi]).fetchall()[0]
        rows = con.execute(
            f"SELECT r.sample_id, r.v, r.picked, r.rank, s.prompt, s.response FROM ({sql}) r "
            "JOIN samples s USING (sample_id) WHERE r.v BETWEEN ? AND ? "
            "ORDER BY r.v, r.sample_id LIMIT ? OFFSET ?",
            params + [lo, hi, limit, offset]).fetchall()
    return {"n_selected": int(counts[0]), "n_total": int(counts[1]),
            "rows": [{"sample_id": r[0], "value": float(r[1]), "selected": bool(r[2]),
                      "rank": r[3], "prompt": _preview(r[4]), "response": _preview(r[5], 80)}
                     for r in rows]}


def histogram(groups: dict[str, np.ndarray], bins: int = 30) -> list[dict[str, Any]]:
    """Shared-edge histograms of several groups as long rows (for a bar chart)."""
    every = np.concatenate([v for v in groups.values() if len(v)] or [np.zeros(0)])
    if not len(every):
        return []
    edges = np.histogram_bin_edges(every, bins=bins)
    out = []
    for name, v in groups.items():
        counts, _ = np.histogram(v, bins=edges)
        out += [{"value": float(edges[i]), "value_end": float(edges[i + 1]), "group": name,
                 "samples": int(c)} for i, c in enumerate(counts)]
    return out


def embedder_for(store: Store, selection_id: str) -> str | None:
    """The embedder whose vectors cover the selection's members best (the selection's
    model first)."""
    sel = get_selection(store, selection_id)
    rows = store.query(
        "SELECT e.embedder, count(*) AS n FROM embeddings e JOIN selection_members m USING "
        "(sample_id) WHERE m.selection_id = ? AND m.layer = '' GROUP BY e.embedder "
        "ORDER BY (e.embedder LIKE ?) DESC, n DESC LIMIT 1",
        [selection_id, f"{sel.model}:%" if sel.model else ""])
    return rows[0][0] if rows else None


def embedding_map(store: Store, selection_id: str, max_points: int = 3000,
                  seed: int = 0) -> dict[str, Any]:
    """A 2-D PCA projection of the pool's embeddings, at most ``max_points`` of them (a
    reproducible sample), with who was selected."""
    sel = get_selection(store, selection_id)
    embedder = embedder_for(store, selection_id)
    if embedder is None:
        return {"embedder": None, "points": [], "n_pool": sel.n_pool, "n_shown": 0}
    pool, params = selection_pool_sql(store, sel)
    with store.connect() as con:
        n_with = con.execute(
            f"SELECT count(*) FROM ({pool}) p JOIN embeddings e ON e.sample_id = p.sample_id "
            "AND e.embedder = ?", params + [embedder]).fetchone()[0]
        frac = min(1.0, max_points / max(1, n_with))
        rows = con.execute(
            f"SELECT p.sample_id, e.vector, (sm.sample_id IS NOT NULL), s.prompt FROM ({pool}) p "
            "JOIN embeddings e ON e.sample_id = p.sample_id AND e.embedder = ? "
            "JOIN samples s ON s.sample_id = p.sample_id "
            "LEFT JOIN selection_members sm ON sm.selection_id = ? AND sm.layer = '' AND "
            "sm.sample_id = p.sample_id WHERE hash(p.sample_id || ?) % 1000000 < ? "
            "ORDER BY p.sample_id LIMIT ?",
            params + [embedder, selection_id, str(seed), int(frac * 1_000_000), max_points]
        ).fetchall()
    if len(rows) < 2:
        return {"embedder": embedder, "points": [], "n_pool": sel.n_pool, "n_shown": 0}
    x = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    points = [{"x": float(xy[i, 0]), "y": float(xy[i, 1]),
               "selection": "selected" if r[2] else "not selected",
               "sample_id": r[0], "prompt": _preview(r[3], 80)} for i, r in enumerate(rows)]
    return {"embedder": embedder, "points": points, "n_pool": int(n_with),
            "n_shown": len(points)}


def member_rank(store: Store, selection_id: str, sample_id: str) -> dict[str, Any] | None:
    rows = store.query_dicts(
        "SELECT rank, gain, score FROM selection_members WHERE selection_id = ? AND layer = '' "
        "AND sample_id = ?", [selection_id, sample_id])
    return rows[0] if rows else None


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


def sample_gradient_scores(store: Store, sample_id: str) -> list[dict[str, Any]]:
    """Every stored whole-scope gradient score of the sample, named by the selections
    (gradient methods) whose config produced it."""
    rows = store.query_dicts(
        "SELECT model, config, score FROM gradient_scores WHERE sample_id = ? AND layer = '' "
        "ORDER BY created_at", [sample_id])
    if not rows:
        return []
    sels = store.query("SELECT selection_id, method, config, model FROM selections WHERE "
                       "method IN ('dualsft', 'gast', 'less')")
    by_key: dict[tuple[str, str], list[str]] = {}
    for sid, method, cfg, model in sels:
        key = config_hash([method, _scored_config(json.loads(cfg) if cfg else {})])
        by_key.setdefault((model, key), []).append(f"{sid} ({method})")
    return [{"score": r["score"], "selections": ", ".join(by_key.get((r["model"], r["config"]),
                                                                     [])) or "-",
             "model": r["model"][:12], "config": r["config"]} for r in rows]


def selection_overlap(store: Store, a: str, b: str) -> dict[str, int]:
    rows = store.query(
        "WITH x AS (SELECT sample_id FROM selection_members WHERE selection_id = ? AND "
        "layer = ''), y AS (SELECT sample_id FROM selection_members WHERE selection_id = ? AND "
        "layer = '') SELECT (SELECT count(*) FROM x), (SELECT count(*) FROM y), "
        "(SELECT count(*) FROM x SEMI JOIN y USING (sample_id))", [a, b])[0]
    n_a, n_b, both = (int(v) for v in rows)
    return {"a": n_a, "b": n_b, "both": both, "only_a": n_a - both, "only_b": n_b - both,
            "union": n_a + n_b - both}


def selection_only(store: Store, a: str, b: str, limit: int = 50,
                   offset: int = 0) -> list[dict[str, Any]]:
    """Members of ``a`` that ``b`` lacks, in ``a``'s pick order."""
    rows = store.query(
        "SELECT m.rank, m.sample_id, m.gain, s.prompt FROM selection_members m JOIN samples s "
        "USING (sample_id) WHERE m.selection_id = ? AND m.layer = '' AND m.sample_id NOT IN "
        "(SELECT sample_id FROM selection_members WHERE selection_id = ? AND layer = '') "
        "ORDER BY m.rank LIMIT ? OFFSET ?", [a, b, limit, offset])
    return [{"rank": r[0], "sample_id": r[1], "gain": r[2], "prompt": _preview(r[3])}
            for r in rows]


# Columns a members table may be sorted by, and the SQL each one sorts on (an allow-list:
# the sort key chosen in the app never reaches the SQL text).
MEMBER_SORTS = {"rank": "m.rank", "gain": "m.gain", "score": "m.score", "chars": "s.n_chars"}


def member_page(store: Store, selection_id: str, limit: int = 50, offset: int = 0,
                sort: str = "rank", descending: bool = False) -> list[dict[str, Any]]:
    """Members with marginal gains and scores (previews only), sorted across all members
    by ``sort`` (one of ``MEMBER_SORTS``; rank breaks ties), one page of them.
    ``zero_gain``: picked at a marginal gain of exactly 0 (greedy had nothing left to
    cover; DELIFT's evidence order chose these)."""
    if sort not in MEMBER_SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(MEMBER_SORTS)}")
    order = f"{MEMBER_SORTS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, m.rank"
    rows = store.query(
        "SELECT m.rank, m.sample_id, m.gain, m.score, s.prompt, s.response, s.n_chars "
        "FROM selection_members m JOIN samples s USING (sample_id) WHERE m.selection_id = ? "
        f"AND m.layer = '' ORDER BY {order} LIMIT ? OFFSET ?", [selection_id, limit, offset])
    return [{"rank": r[0], "sample_id": r[1], "gain": r[2], "zero_gain": r[2] == 0,
             "score": r[3], "prompt": _preview(r[4]), "response": _preview(r[5], 80),
             "chars": r[6]} for r in rows]


def member_search(store: Store, selection_id: str, limit: int = 50, offset: int = 0,
                  sort: str = "rank", descending: bool = False, search: str | None = None,
                  where: tuple[tuple[str, str], ...] = ()) -> tuple[list[dict[str, Any]], int]:
    """Members matching a text ``search`` (prompt or response, case-insensitive) and
    metadata conditions ``where`` ((field, value) pairs, as in ``SampleFilter.where``; the
    metadata of the version the selection was made from), sorted across all matching
    members by ``sort`` (one of ``MEMBER_SORTS``; rank breaks ties): one page of them, each
    with its metadata, and how many match."""
    if sort not in MEMBER_SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(MEMBER_SORTS)}")
    sel = get_selection(store, selection_id)
    sql = ("SELECT m.rank, m.sample_id, m.gain, m.score, s.prompt, s.response, s.n_chars, "
           "vm.metadata, count(*) OVER () AS n_total FROM selection_members m "
           "JOIN samples s USING (sample_id) LEFT JOIN version_members vm ON "
           "vm.sample_id = m.sample_id AND vm.dataset = ? AND vm.version = ? "
           "WHERE m.selection_id = ? AND m.layer = ''")
    params: list[Any] = [sel.dataset, sel.version, selection_id]
    if search and search.strip():
        sql += " AND (s.prompt ILIKE ? ESCAPE '!' OR s.response ILIKE ? ESCAPE '!')"
        params += [_like(search.strip()), _like(search.strip())]
    if where:
        more, more_params = _metadata_where("vm.metadata", tuple(where))
        sql += more
        params += more_params
    order = f"{MEMBER_SORTS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, m.rank"
    rows = store.query(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", params + [limit, offset])
    if rows:
        total = int(rows[0][8])
    else:
        total = int(store.query(f"SELECT count(*) FROM ({sql})", params)[0][0]) if offset else 0
    return [{"rank": r[0], "sample_id": r[1], "gain": r[2], "zero_gain": r[2] == 0,
             "score": r[3], "prompt": _preview(r[4]), "response": _preview(r[5], 80),
             "chars": r[6], "metadata": json.loads(r[7]) if r[7] else {}}
            for r in rows], total


def member_columns(store: Store, selection_id: str) -> dict[str, bool]:
    """Whether any member has a marginal gain and whether any has a score (a column with no
    value for the whole selection is neither shown nor offered as a sort)."""
    row = store.query("SELECT count(gain), count(score) FROM selection_members WHERE "
                      "selection_id = ? AND layer = ''", [selection_id])[0]
    return {"gain": bool(row[0]), "score": bool(row[1])}


def metadata_values(store: Store, dataset: str, version: int,
                    per_key: int = 50) -> list[tuple[str, str, int]]:
    """(field, value, count) for every metadata field of a version, each field's most
    common ``per_key`` values, for filters on several fields at once."""
    out: list[tuple[str, str, int]] = []
    for key in metadata_keys(store, dataset, version):
        out += [(key, v, n) for v, n in metadata_counts(store, dataset, version, key, per_key)]
    return out


def member_at(store: Store, selection_id: str, rank: int) -> str | None:
    """The sample picked ``rank``-th (0-based), for previous / next through a selection."""
    rows = store.query("SELECT sample_id FROM selection_members WHERE selection_id = ? AND "
                       "layer = '' AND rank = ?", [selection_id, rank])
    return rows[0][0] if rows else None


def zero_gain_count(store: Store, selection_id: str) -> int:
    """How many members were picked at a marginal gain of exactly 0."""
    return int(store.query("SELECT count(*) FROM selection_members WHERE selection_id = ? "
                           "AND layer = '' AND gain = 0", [selection_id])[0][0])


def gain_curve(store: Store, selection_id: str, max_points: int = 500) -> list[dict[str, Any]]:
    """Marginal gain by rank, thinned to at most ``max_points`` points; the first and last
    zero-gain picks are always kept, so the chart shows where the zero-gain tail starts."""
    n = store.query("SELECT count(*) FROM selection_members WHERE selection_id = ? AND "
                    "layer = '' AND gain IS NOT NULL", [selection_id])[0][0]
    step = max(1, -(-n // max_points))
    rows = store.query(
        "WITH g AS (SELECT rank, gain FROM selection_members WHERE selection_id = ? AND "
        "layer = '' AND gain IS NOT NULL), z AS (SELECT min(rank) AS a, max(rank) AS b "
        "FROM g WHERE gain = 0) "
        "SELECT rank, gain FROM g, z WHERE rank % ? = 0 OR rank = z.a OR rank = z.b "
        "ORDER BY rank", [selection_id, step])
    return [{"rank": int(r), "gain": float(g), "zero_gain": g == 0} for r, g in rows]


def selection_composition(store: Store, selection_id: str,
                          key: str) -> list[dict[str, Any]]:
    """Metadata field ``key`` over the selection's pool: per value, how many samples were
    selected and how many were not, most common value first (values as in the version
    the selection was made from; a missing field counts as "(none)")."""
    sel = get_selection(store, selection_id)
    pool, params = selection_pool_sql(store, sel)
    rows = store.query(
        f"WITH pool AS ({pool}) SELECT json_extract_string(vm.metadata, '$.' || ?) AS v, "
        "count(sm.sample_id) AS picked, count(*) - count(sm.sample_id) AS rest "
        "FROM pool p JOIN version_members vm ON vm.sample_id = p.sample_id AND "
        "vm.dataset = ? AND vm.version = ? LEFT JOIN selection_members sm ON "
        "sm.selection_id = ? AND sm.layer = '' AND sm.sample_id = p.sample_id "
        "GROUP BY v ORDER BY picked + rest DESC, v",
        params + [_json_key(key), sel.dataset, sel.version, selection_id])
    return [{"value": "(none)" if v is None else v, "selected": int(a), "not selected": int(b)}
            for v, a, b in rows]


def selection_metadata_keys(store: Store, selection_id: str) -> list[str]:
    """Metadata fields of the version a selection was made from."""
    sel = get_selection(store, selection_id)
    return metadata_keys(store, sel.dataset, sel.version)


def model_label(store: Store, fingerprint: str | None) -> str:
    """A model by name when the store knows it (the models table, else a run that named
    it), else its fingerprint, said to be one."""
    if not fingerprint:
        return "-"
    rows = store.query("SELECT name FROM models WHERE fingerprint = ?", [fingerprint])
    if rows and rows[0][0]:
        return str(rows[0][0])
    return f"fingerprint {fingerprint[:12]} (name not recorded)"


# -- masks and layer-wise subsets ---------------------------------------------------------

def list_masks(store: Store) -> list[dict[str, Any]]:
    return store.query_dicts(
        "SELECT k.selection_id, s.dataset, s.version, s.stage, s.method, k.density, "
        "k.n_kept, k.n_params, k.created_at FROM masks k LEFT JOIN selections s USING "
        "(selection_id) ORDER BY k.created_at")


def layered_selections(store: Store) -> list[str]:
    return [r[0] for r in store.query(
        "SELECT DISTINCT selection_id FROM selection_members WHERE layer <> '' ORDER BY 1")]


def layer_subset_sizes(store: Store, selection_id: str) -> list[dict[str, Any]]:
    """Per layer: how many samples train it (GAST layer-wise subsets)."""
    rows = store.query(
        "SELECT layer, count(*) FROM selection_members WHERE selection_id = ? AND layer <> '' "
        "GROUP BY layer", [selection_id])
    return sorted(({"layer": layer, "samples": int(n)} for layer, n in rows),
                  key=lambda r: _layer_order(r["layer"]))


def _layer_order(name: str) -> tuple:
    parts = name.replace(".", " ").split()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def layer_overlap(store: Store, selection_id: str) -> list[dict[str, Any]]:
    """Pairwise Jaccard overlap of the per-layer subsets."""
    rows = store.query(
        "WITH m AS (SELECT layer, sample_id FROM selection_members WHERE selection_id = ? AND "
        "layer <> ''), n AS (SELECT layer, count(*) AS c FROM m GROUP BY layer) "
        "SELECT a.layer, b.layer, count(*) AS both_, na.c, nb.c FROM m a JOIN m b USING "
        "(sample_id) JOIN n na ON na.layer = a.layer JOIN n nb ON nb.layer = b.layer "
        "GROUP BY a.layer, b.layer, na.c, nb.c", [selection_id])
    return [{"layer_a": a, "layer_b": b, "jaccard": both / max(1, ca + cb - both)}
            for a, b, both, ca, cb in rows]


def selections_table(store: Store, dataset: str | None = None) -> list[dict[str, Any]]:
    """Selections with the fields people compare, and whether each has a mask or layers."""
    sql = ("SELECT s.selection_id, s.dataset, s.version, s.stage, s.method, s.function, "
           "s.budget, s.n_pool, s.n_selected, s.objective, s.parent, s.target, s.seconds, "
           "s.created_at, (k.selection_id IS NOT NULL) AS has_mask FROM selections s "
           "LEFT JOIN masks k USING (selection_id)")
    params: list[Any] = []
    if dataset:
        sql += " WHERE s.dataset = ?"
        params.append(dataset)
    return store.query_dicts(sql + " ORDER BY s.created_at, s.selection_id", params)


def list_selections_all(store: Store) -> list[SelectionRecord]:
    """Every selection, oldest first (the store reader, under a name the app caches)."""
    from curator.store.selections import list_selections

    return list_selections(store)


def example_utilities(store: Store, model: str, config: str,
                      example_id: str) -> list[dict[str, Any]]:
    """Every valid stored pair with ``example_id`` as the example: for each target, d(i)
    (the model's distance from the target's answer alone), d(i | j) (with the example shown
    first) and the utility d(i) - d(i | j) (positive: the example helps that answer)."""
    return store.query_dicts(
        "SELECT target_id, utility, d_target, d_given FROM utilities WHERE model = ? AND "
        "config = ? AND example_id = ? AND valid AND utility IS NOT NULL "
        "ORDER BY utility DESC, target_id", [model, config, example_id])
