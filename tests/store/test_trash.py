"""The trash: put samples aside, list them, restore them; later selections leave them out
(pool and target set), earlier ones keep them, and the browser rebuilds a selection's pool
without what was trashed when it was made."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from curator.cli import main
from curator.config import StageSpec
from curator.ingestion.ingest import ingest
from curator.stages import resolve_pools, select_stage
from curator.store import NotFound, Store, browse_scores
from curator.store.datasets import load_samples
from curator.store.selection_rows import get_selection
from curator.store.trash import (
    restore_samples,
    trash_count,
    trash_page,
    trash_samples,
    trashed_ids,
)
from tests.helpers import write_jsonl


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s")
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(10)]
    ingest(s, write_jsonl(tmp_path / "d.jsonl", rows), "d")
    ingest(s, write_jsonl(tmp_path / "q.jsonl", rows[:3]), "q")
    return s


def ids(store, dataset="d"):
    return [x.sample_id for x in load_samples(store, dataset, 1)]


def test_trash_list_and_restore(store):
    a, b, c = ids(store)[:3]
    assert trash_samples(store, "d", [a, b, a], reason=" wrong answer ") == 2
    assert trash_samples(store, "d", [b, c]) == 1  # b was there: kept with its first reason
    assert trashed_ids(store, "d") == {a, b, c} and trash_count(store, "d") == 3
    page = {r["sample_id"]: r for r in trash_page(store, "d")}
    assert page[a]["reason"] == "wrong answer" and page[b]["reason"] == "wrong answer"
    assert page[c]["reason"] is None and page[a]["prompt"].startswith("Question")
    assert trashed_ids(store, "q") == set()  # per dataset
    assert restore_samples(store, "d", [a, "not-in-trash"]) == 1
    assert trashed_ids(store, "d") == {b, c}
    assert restore_samples(store, "d") == 2 and trash_count(store, "d") == 0


def test_bad_trash_input(store):
    with pytest.raises(NotFound, match="no dataset 'nope'"):
        trash_samples(store, "nope", ["x"])
    with pytest.raises(NotFound, match="1 id\\(s\\) are not samples of q: "):
        trash_samples(store, "q", [ids(store)[9]])  # a sample of d, not of q
    assert trash_count(store, "q") == 0  # nothing half-written
    assert trash_samples(store, "d", []) == 0


def test_later_selections_leave_the_trash_out(store):
    pool = ids(store)
    before = select_stage(store, "d", StageSpec(method="full", budget="100%"))
    trash_samples(store, "d", pool[:2])
    trash_samples(store, "q", [ids(store, "q")[0]])
    pools = resolve_pools(store, "d", StageSpec(stage="task", method="random", target="q"))
    assert [s.sample_id for s in pools.pool] == pool[2:]
    assert [s.sample_id for s in pools.target] == ids(store, "q")[1:]
    after = select_stage(store, "d", StageSpec(method="full", budget="100%"))
    assert after.selection_id != before.selection_id  # another pool: not reused
    assert after.sample_ids == pool[2:] and after.notes == ["2 trashed sample(s) left out"]
    rec = get_selection(store, after.selection_id)
    assert rec.n_pool == 8 and rec.config["trashed"] == sorted(pool[:2])
    # the selection made before keeps its members, and each pool is rebuilt as it was
    assert get_selection(store, before.selection_id).n_pool == 10
    for sel, n in ((before.selection_id, 10), (after.selection_id, 8)):
        values = browse_scores.selection_score_values(store, sel, "length (chars)")
        assert len(values["selected"]) + len(values["not selected"]) == n
    restore_samples(store, "d")
    again = select_stage(store, "d", StageSpec(method="full", budget="100%"))
    assert again.selection_id == before.selection_id  # same pool again: the old one reused


def test_a_pool_all_in_the_trash_is_a_clear_error(store):
    trash_samples(store, "q", ids(store, "q"))
    with pytest.raises(ValueError, match="every sample of q v1 is in the trash"):
        select_stage(store, "q", StageSpec(method="random", budget="1"))
    with pytest.raises(ValueError, match="target set q v1 has no rows outside the trash"):
        resolve_pools(store, "d", StageSpec(stage="task", method="random", target="q"))


def test_trash_cli(store):
    a, b = ids(store)[:2]
    run = CliRunner().invoke
    common = ["-d", "d", "--store", str(store.path)]
    r = run(main, ["trash", "add", a, b, *common, "--reason", "leak"])
    assert r.exit_code == 0, r.output
    assert r.output == "trashed 2 sample(s) of d (0 already there); 2 in its trash\n"
    r = run(main, ["trash", "list", *common])
    assert r.exit_code == 0 and r.output.startswith("2 sample(s) in the trash of d\n")
    assert "leak" in r.output and a in r.output
    r = run(main, ["trash", "restore", a, *common])
    assert r.output == "restored 1 sample(s) of d; 1 left in its trash\n"
    r = run(main, ["trash", "restore", *common])
    assert r.exit_code == 1 and "give sample ids or --all" in r.output
    r = run(main, ["trash", "restore", "--all", *common])
    assert r.output == "restored 1 sample(s) of d; 0 left in its trash\n"
    r = run(main, ["trash", "add", "zzz", *common])
    assert r.exit_code == 1 and "error: 1 id(s) are not samples of d: zzz" in r.output
