"""The app's reads of selections: the table of them, a selection's members (paged,
sorted, searched), its gain curve, its composition by a metadata field, and two
selections compared.

Sort keys come from an allow-list (``MEMBER_SORTS``) and filters from ``browse_filters``:
every value the app chose is a bound parameter.
"""

from __future__ import annotations

import json
from typing import Any

from curator.store import Store
from curator.store.browse_filters import json_key, like_pattern, metadata_where, preview
from curator.store.browse_versions import metadata_keys
from curator.store.selection_rows import get_selection, selection_pool_sql


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


def model_label(store: Store, fingerprint: str | None) -> str:
    """A model by name when the store knows it (the models table, else a run that named
    it), else its fingerprint, said to be one."""
    if not fingerprint:
        return "-"
    rows = store.query("SELECT name FROM models WHERE fingerprint = ?", [fingerprint])
    if rows and rows[0][0]:
        return str(rows[0][0])
    return f"fingerprint {fingerprint[:12]} (name not recorded)"


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
             "score": r[3], "prompt": preview(r[4]), "response": preview(r[5], 80),
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
        params += [like_pattern(search.strip()), like_pattern(search.strip())]
    if where:
        more, more_params = metadata_where("vm.metadata", tuple(where))
        sql += more
        params += more_params
    order = f"{MEMBER_SORTS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, m.rank"
    rows = store.query(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", params + [limit, offset])
    if rows:
        total = int(rows[0][8])
    else:
        total = int(store.query(f"SELECT count(*) FROM ({sql})", params)[0][0]) if offset else 0
    return [{"rank": r[0], "sample_id": r[1], "gain": r[2], "zero_gain": r[2] == 0,
             "score": r[3], "prompt": preview(r[4]), "response": preview(r[5], 80),
             "chars": r[6], "metadata": json.loads(r[7]) if r[7] else {}}
            for r in rows], total


def member_columns(store: Store, selection_id: str) -> dict[str, bool]:
    """Whether any member has a marginal gain and whether any has a score (a column with no
    value for the whole selection is neither shown nor offered as a sort)."""
    row = store.query("SELECT count(gain), count(score) FROM selection_members WHERE "
                      "selection_id = ? AND layer = ''", [selection_id])[0]
    return {"gain": bool(row[0]), "score": bool(row[1])}


def member_at(store: Store, selection_id: str, rank: int) -> str | None:
    """The sample picked ``rank``-th (0-based), for previous / next through a selection."""
    rows = store.query("SELECT sample_id FROM selection_members WHERE selection_id = ? AND "
                       "layer = '' AND rank = ?", [selection_id, rank])
    return rows[0][0] if rows else None


def member_rank(store: Store, selection_id: str, sample_id: str) -> dict[str, Any] | None:
    rows = store.query_dicts(
        "SELECT rank, gain, score FROM selection_members WHERE selection_id = ? AND layer = '' "
        "AND sample_id = ?", [selection_id, sample_id])
    return rows[0] if rows else None


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


def selection_metadata_keys(store: Store, selection_id: str) -> list[str]:
    """Metadata fields of the version a selection was made from."""
    sel = get_selection(store, selection_id)
    return metadata_keys(store, sel.dataset, sel.version)


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
        params + [json_key(key), sel.dataset, sel.version, selection_id])
    return [{"value": "(none)" if v is None else v, "selected": int(a), "not selected": int(b)}
            for v, a, b in rows]


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
    return [{"rank": r[0], "sample_id": r[1], "gain": r[2], "prompt": preview(r[3])}
            for r in rows]
