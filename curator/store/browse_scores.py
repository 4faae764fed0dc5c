"""The app's reads of per-sample values over a selection's pool: score distributions of
selected against not selected, the samples in a brushed score range, a 2-D map of the
embeddings, and one sample's stored gradient scores and pairwise utilities.

Values are read and binned in the database; only histograms, pages and a bounded sample
of points reach the browser.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from curator.config import config_hash
from curator.store import Store
from curator.store.browse_filters import preview
from curator.store.selection_rows import SelectionRecord, get_selection, selection_pool_sql
from curator.vocabulary import GRADIENT_METHODS


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
                      "rank": r[3], "prompt": preview(r[4]), "response": preview(r[5], 80)}
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
               "sample_id": r[0], "prompt": preview(r[3], 80)} for i, r in enumerate(rows)]
    return {"embedder": embedder, "points": points, "n_pool": int(n_with),
            "n_shown": len(points)}


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


def example_utilities(store: Store, model: str, config: str,
                      example_id: str) -> list[dict[str, Any]]:
    """Every valid stored pair with ``example_id`` as the example: for each target, d(i)
    (the model's distance from the target's answer alone), d(i | j) (with the example shown
    first) and the utility d(i) - d(i | j) (positive: the example helps that answer)."""
    return store.query_dicts(
        "SELECT target_id, utility, d_target, d_given FROM utilities WHERE model = ? AND "
        "config = ? AND example_id = ? AND valid AND utility IS NOT NULL "
        "ORDER BY utility DESC, target_id", [model, config, example_id])
