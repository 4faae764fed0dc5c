"""A selection's pool is stored with it (migration 8): the app, the demo and re-selection
read the pool the ranker saw, not one rebuilt with today's trash; selections stored before
pools were keep a rebuilt pool."""

from __future__ import annotations

import pytest

from curator.config import StageSpec
from curator.ingestion.ingest import ingest
from curator.stages import resolve_pools, select_stage
from curator.store import Store, browse_scores
from curator.store.datasets import load_samples
from curator.store.selection_rows import (
    SelectionRecord,
    get_selection,
    save_selection,
    selection_pool_ids,
    selection_pool_sql,
)
from curator.store.trash import trash_samples
from tests.helpers import write_jsonl


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s")
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(12)]
    ingest(s, write_jsonl(tmp_path / "v1.jsonl", rows[:8]), "d")
    ingest(s, write_jsonl(tmp_path / "v2.jsonl", rows[8:]), "d", append=True)
    return s


def ids(store, version):
    return [s.sample_id for s in load_samples(store, "d", version)]


def test_the_stored_pool_is_the_pool_the_ranker_saw(store):
    v1 = ids(store, 1)
    trash_samples(store, "d", v1[:1])
    first = select_stage(store, "d", StageSpec(method="random", budget="3", version=1))
    spec = StageSpec(stage="continual", method="random", budget="2", version=2,
                     parent=first.selection_id)
    cont = select_stage(store, "d", spec)
    assert selection_pool_ids(store, first.selection_id) == v1[1:]
    new = [i for i in ids(store, 2) if i not in set(v1)]
    assert selection_pool_ids(store, cont.selection_id) == new
    assert [s.sample_id for s in resolve_pools(store, "d", spec).pool] == new
    # trashing more later changes what a new selection would see, not the stored pools
    trash_samples(store, "d", v1[1:3] + new[:1])
    assert selection_pool_ids(store, first.selection_id) == v1[1:]
    assert selection_pool_ids(store, cont.selection_id) == new
    values = browse_scores.selection_score_values(store, first.selection_id, "length (chars)")
    assert len(values["selected"]) == 3 and len(values["not selected"]) == 4


def test_a_selection_stored_without_its_pool_gets_it_rebuilt(store):
    v1 = ids(store, 1)
    trash_samples(store, "d", v1[:2])
    rec = SelectionRecord(dataset="d", version=1, stage="instruction", method="random",
                          budget="2", n_pool=6, n_selected=2,
                          config={"trashed": sorted(v1[:2])})
    sel = save_selection(store, rec, v1[2:4])          # as before migration 8: no pool
    sql, _ = selection_pool_sql(store, get_selection(store, sel))
    assert "version_members" in sql
    assert selection_pool_ids(store, sel) == sorted(v1[2:])


def test_saving_a_200k_pool_is_one_statement(store):
    pool = [f"{i:032x}" for i in range(200_000)]
    rec = SelectionRecord(dataset="d", version=1, stage="instruction", method="random",
                          budget="1", n_pool=len(pool), n_selected=1)
    sel = save_selection(store, rec, pool[:1], pool=pool)
    assert store.query("SELECT count(*), min(position), max(position) FROM selection_pools "
                       "WHERE selection_id = ?", [sel]) == [(200_000, 0, 199_999)]
    assert selection_pool_ids(store, sel)[:3] == pool[:3]
