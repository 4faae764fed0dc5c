"""Score caches in the store: embeddings, d(i) losses, pairwise utilities, gradient scores.

Keys are (model fingerprint, config hash, sample ids), so the same numbers are never
computed twice and a new version costs only what it adds. Writes are batched into short
transactions; ``INSERT OR IGNORE`` makes a resumed run that recomputes a chunk harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curator.store import Store


def _with_ids(con, ids: Sequence[str]) -> None:
    """Register the wanted ids as a temporary relation `_ids(sample_id)`."""
    con.register("_ids", pa.table({"sample_id": pa.array(list(ids), pa.string())}))


def _insert(store: Store, table: str, rows: pa.Table, *, replace: bool = False) -> None:
    """Insert an Arrow table into ``table`` by column name in one short transaction.
    OR IGNORE by default: a resumed job that recomputes a chunk changes nothing."""
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    cols = ", ".join(rows.column_names)
    with store.atomic() as con:
        con.register("_rows", rows)
        con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _rows")
        con.unregister("_rows")


def _repeat(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


# -- embeddings -------------------------------------------------------------------------

def remember_model(store: Store, fingerprint: str, name: str) -> None:
    """Record a model's name under its fingerprint (scores are keyed by the fingerprint; the
    app and reports show the name). The first name recorded for a fingerprint stays."""
    with store.atomic() as con:
        con.execute("INSERT OR IGNORE INTO models (fingerprint, name) VALUES (?, ?)",
                    [fingerprint, name])


def load_embeddings(store: Store, embedder: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
    if not ids:
        return {}
    with store.connect() as con:
        _with_ids(con, ids)
        rows = con.execute("SELECT e.sample_id, e.vector FROM embeddings e JOIN _ids USING "
                           "(sample_id) WHERE e.embedder = ?", [embedder]).fetchall()
        con.unregister("_ids")
    return {sid: np.frombuffer(blob, dtype="<f4") for sid, blob in rows}


def save_embeddings(store: Store, embedder: str, ids: Sequence[str], vectors: np.ndarray) -> None:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")  # (N, d)
    if len(ids) != vectors.shape[0]:
        raise ValueError("ids and vectors differ in length")
    _insert(store, "embeddings", pa.table({
        "embedder": _repeat(embedder, len(ids)),
        "sample_id": pa.array(list(ids), pa.string()),
        "dim": pa.array([vectors.shape[1]] * len(ids), pa.int32()),
        "vector": pa.array([row.tobytes() for row in vectors], pa.binary()),
    }))


# -- pairwise utilities -----------------------------------------------------------------

@dataclass
class UtilityRows:
    """Parallel arrays of stored utilities."""

    target_id: list[str]
    example_id: list[str]
    utility: np.ndarray      # (n,) float64, NaN where invalid
    valid: np.ndarray        # (n,) bool

    def __len__(self) -> int:
        return len(self.target_id)


def existing_pairs(store: Store, model: str, config: str,
                   target_ids: Sequence[str]) -> set[tuple[str, str]]:
    """Pairs already stored (valid or not) for these targets."""
    if not target_ids:
        return set()
    with store.connect() as con:
        _with_ids(con, target_ids)
        rows = con.execute("SELECT u.target_id, u.example_id FROM utilities u JOIN _ids i ON "
                           "u.target_id = i.sample_id WHERE u.model = ? AND u.config = ?",
                           [model, config]).fetchall()
        con.unregister("_ids")
    return {(t, e) for t, e in rows}


def save_utilities(store: Store, model: str, config: str, target_ids: Sequence[str],
                   example_ids: Sequence[str], utility: Sequence[float],
                   d_target: Sequence[float], d_given: Sequence[float],
                   valid: Sequence[bool], reasons: Sequence[str | None] | None = None) -> None:
    n = len(target_ids)
    util = np.asarray(utility, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    _insert(store, "utilities", pa.table({
        "model": _repeat(model, n),
        "config": _repeat(config, n),
        "target_id": pa.array(list(target_ids), pa.string()),
        "example_id": pa.array(list(example_ids), pa.string()),
        "utility": pa.array(np.where(ok, util, np.nan), pa.float64(), mask=~ok),
        "d_target": pa.array(np.asarray(d_target, dtype=np.float64), pa.float64()),
        "d_given": pa.array(np.asarray(d_given, dtype=np.float64), pa.float64()),
        "valid": pa.array(ok, pa.bool_()),
        "reason": pa.array(list(reasons) if reasons is not None else [None] * n, pa.string()),
    }))


def load_utilities(store: Store, model: str, config: str, target_ids: Sequence[str],
                   example_ids: Iterable[str] | None = None) -> UtilityRows:
    """Stored utilities whose target is in ``target_ids`` (and example in ``example_ids``)."""
    with store.connect() as con:
        _with_ids(con, target_ids)
        sql = ("SELECT u.target_id, u.example_id, u.utility, u.valid FROM utilities u "
               "JOIN _ids t ON u.target_id = t.sample_id ")
        if example_ids is not None:
            con.register("_ex", pa.table({"sample_id": pa.array(list(example_ids),
                                                                 pa.string())}))
            sql += "JOIN _ex x ON u.example_id = x.sample_id "
        rows = con.execute(sql + "WHERE u.model = ? AND u.config = ? ORDER BY u.target_id, "
                           "u.example_id", [model, config]).fetchall()
        con.unregister("_ids")
        if example_ids is not None:
            con.unregister("_ex")
    return UtilityRows([r[0] for r in rows], [r[1] for r in rows],
                       np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=float),
                       np.array([bool(r[3]) for r in rows], dtype=bool))


# -- d(i) losses --------------------------------------------------------------------------

def load_losses(store: Store, model: str, config: str,
                ids: Sequence[str]) -> dict[str, float | None]:
    with store.connect() as con:
        _with_ids(con, ids)
        rows = con.execute("SELECT l.sample_id, l.distance, l.valid FROM losses l JOIN _ids "
                           "USING (sample_id) WHERE l.model = ? AND l.config = ?",
                           [model, config]).fetchall()
        con.unregister("_ids")
    return {sid: (d if ok else None) for sid, d, ok in rows}


def save_losses(store: Store, model: str, config: str, ids: Sequence[str],
                distance: Sequence[float | None], n_tokens: Sequence[int]) -> None:
    d = np.array([np.nan if x is None else float(x) for x in distance], dtype=np.float64)
    ok = np.isfinite(d)
    n = len(ids)
    _insert(store, "losses", pa.table({
        "model": _repeat(model, n),
        "config": _repeat(config, n),
        "sample_id": pa.array(list(ids), pa.string()),
        "distance": pa.array(d, pa.float64(), mask=~ok),
        "n_tokens": pa.array([int(x) for x in n_tokens], pa.int32()),
        "valid": pa.array(ok, pa.bool_()),
    }))


# -- gradient scores ------------------------------------------------------------------------

def save_gradient_scores(store: Store, model: str, config: str, ids: Sequence[str],
                         scores: np.ndarray, layer: str = "") -> None:
    # REPLACE: a gradient score is recomputed whole for a pool, never partially resumed.
    _insert(store, "gradient_scores", pa.table({
        "model": _repeat(model, len(ids)),
        "config": _repeat(config, len(ids)),
        "sample_id": pa.array(list(ids), pa.string()),
        "layer": _repeat(layer, len(ids)),
        "score": pa.array(np.asarray(scores, dtype=np.float64), pa.float64()),
    }), replace=True)


def load_gradient_scores(store: Store, model: str, config: str, ids: Sequence[str],
                         layer: str = "") -> dict[str, float]:
    with store.connect() as con:
        _with_ids(con, ids)
        rows = con.execute("SELECT g.sample_id, g.score FROM gradient_scores g JOIN _ids USING "
                           "(sample_id) WHERE g.model = ? AND g.config = ? AND g.layer = ?",
                           [model, config, layer]).fetchall()
        con.unregister("_ids")
    return dict(rows)


# -- quality prior ----------------------------------------------------------------------

def save_quality(store: Store, model: str, config: str, ids: Sequence[str],
                 loss: np.ndarray, uncond_loss: np.ndarray, stop_nll: np.ndarray,
                 n_answer: np.ndarray, reason: Sequence[str]) -> None:
    """One row per sample; NULL where a value is NaN (invalid rows keep their reason)."""
    n = len(ids)

    def col(v: np.ndarray) -> pa.Array:
        v = np.asarray(v, dtype=np.float64)
        return pa.array(v, pa.float64(), mask=~np.isfinite(v))

    _insert(store, "quality", pa.table({
        "model": _repeat(model, n),
        "config": _repeat(config, n),
        "sample_id": pa.array(list(ids), pa.string()),
        "loss": col(loss), "uncond_loss": col(uncond_loss), "stop_nll": col(stop_nll),
        "n_answer": pa.array([int(x) for x in n_answer], pa.int32()),
        "valid": pa.array([r == "" for r in reason], pa.bool_()),
        "reason": pa.array([r or None for r in reason], pa.string()),
    }))


def load_quality(store: Store, model: str, config: str,
                 ids: Sequence[str]) -> dict[str, tuple[float, float, float, int, str]]:
    """sample id -> (loss, uncond_loss, stop_nll, n_answer, reason) for the stored rows;
    NaN for NULL values, reason "" for valid rows."""
    if not ids:
        return {}
    with store.connect() as con:
        _with_ids(con, ids)
        rows = con.execute("SELECT q.sample_id, q.loss, q.uncond_loss, q.stop_nll, q.n_answer, "
                           "q.reason FROM quality q JOIN _ids USING (sample_id) "
                           "WHERE q.model = ? AND q.config = ?", [model, config]).fetchall()
        con.unregister("_ids")
    nan = float("nan")
    return {sid: (nan if a is None else a, nan if b is None else b, nan if c is None else c,
                  int(n or 0), r or "") for sid, a, b, c, n, r in rows}


def sample_quality(store: Store, sample_id: str) -> list[dict[str, object]]:
    """Every stored quality-prior row of one sample (one per model and config), newest
    first, with the model's name where it was recorded: what the app's sample view shows."""
    with store.connect() as con:
        rows = con.execute(
            "SELECT q.model, m.name, q.loss, q.uncond_loss, q.stop_nll, q.n_answer, q.reason "
            "FROM quality q LEFT JOIN models m ON m.fingerprint = q.model "
            "WHERE q.sample_id = ? ORDER BY q.created_at DESC", [sample_id]).fetchall()
    out = []
    for model, name, loss, uncond, stop, n, reason in rows:
        ifd = loss / uncond if loss is not None and uncond else None
        out.append({"model": name or model, "loss": loss, "uncond_loss": uncond, "ifd": ifd,
                    "stop_nll": stop, "n_answer": n, "reason": reason or ""})
    return out
