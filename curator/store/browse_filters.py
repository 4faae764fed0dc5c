"""The filters the app's pages share, as SQL with bound parameters, and row previews.

A filter chosen in the app (text, metadata conditions, length and score bounds) becomes a
``WHERE`` clause here whose every value is a parameter: no SQL is built from user text.
``browse_versions`` (a version's samples) and ``browse_selections`` (a selection's members)
filter with them; rows of text reach a page trimmed by ``preview``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PREVIEW_CHARS = 160


def preview(text: str | None, n: int = PREVIEW_CHARS) -> str:
    """``text`` on one line, cut to ``n`` characters (an ellipsis marks the cut)."""
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


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


def json_key(key: str) -> str:
    # Quoted JSON path member: any key, no injection (it is a bound parameter anyway).
    return json.dumps(key)


def like_pattern(text: str) -> str:
    """A case-insensitive ``ILIKE ... ESCAPE '!'`` pattern that finds ``text`` anywhere."""
    return "%" + "".join("!" + c if c in "!%_" else c for c in text) + "%"


def metadata_where(column: str, where: tuple[tuple[str, str], ...]) -> tuple[str, list[Any]]:
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
                params.append(json_key(key))
            else:
                alts.append(f"json_extract_string({column}, '$.' || ?) = ?")
                params += [json_key(key), value]
        sql += " AND (" + " OR ".join(alts) + ")"
    return sql, params


def filtered_members_sql(dataset: str, version: int, f: SampleFilter) -> tuple[str, list[Any]]:
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
        params += [like_pattern(f.search), like_pattern(f.search)]
    if f.meta_key and f.meta_value is not None:
        if f.meta_value == "(none)":
            sql += " AND json_extract_string(m.metadata, '$.' || ?) IS NULL"
            params.append(json_key(f.meta_key))
        else:
            sql += " AND json_extract_string(m.metadata, '$.' || ?) = ?"
            params += [json_key(f.meta_key), f.meta_value]
    if f.where:
        more, more_params = metadata_where("m.metadata", f.where)
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
