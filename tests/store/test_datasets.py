"""Reading datasets, versions and samples back out of the store."""

from __future__ import annotations

import pytest

from curator.ingestion.ingest import ingest
from curator.store import NotFound, Store
from curator.store.datasets import (
    diff_versions,
    get_samples,
    get_version,
    iter_samples,
    list_datasets,
    list_versions,
    load_samples,
    quarantine_rows,
    require_dataset,
    resolve_version,
    version_sample_ids,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, write_numbered):
    """Dataset "d": v1 = 0..9 (one bad row), v2 = snapshot 5..14, v3 = v2 + 20..21.
    Dataset "e": one version. Read-only for the tests below."""
    tmp = tmp_path_factory.mktemp("ds")
    store = Store(tmp / "store")
    ingest(store, write_numbered(tmp / "v1.jsonl", range(10), ["{broken"]), "d")
    ingest(store, write_numbered(tmp / "v2.jsonl", range(5, 15)), "d")
    ingest(store, write_numbered(tmp / "v3.jsonl", [20, 21]), "d", append=True)
    ingest(store, write_numbered(tmp / "e.jsonl", [1]), "e")
    return store


def test_list_datasets(built):
    rows = list_datasets(built)
    assert [(r["name"], r["n_versions"], r["latest"]) for r in rows] == [("d", 3, 3), ("e", 1, 1)]


def test_unknown_dataset_names_the_known_ones(built, store):
    with pytest.raises(NotFound, match=r"^no dataset 'x' \(known: d, e\)$"):
        require_dataset(built, "x")
    with pytest.raises(NotFound, match=r"^no dataset 'x' \(the store has no datasets yet\)$"):
        list_versions(store, "x")


def test_resolve_version(built):
    assert [resolve_version(built, "d", v) for v in (None, "latest", 1, "2", "v3")] == \
        [3, 3, 1, 2, 3]
    with pytest.raises(NotFound, match=r"^dataset 'd' has no version 4$"):
        resolve_version(built, "d", 4)
    with pytest.raises(NotFound, match=r"^bad version 'two': use a number such as 2 or v2$"):
        resolve_version(built, "d", "two")


def test_get_version_and_list_versions(built):
    v2 = get_version(built, "d", 2)
    assert (v2.dataset, v2.version, v2.parent, v2.mode, v2.n_read, v2.n_members,
            v2.n_added, v2.n_removed, v2.n_unchanged) == ("d", 2, 1, "snapshot", 10, 10, 5, 5, 5)
    assert v2.source.endswith("v2.jsonl")
    assert get_version(built, "d") == list_versions(built, "d")[-1]
    assert [(v.version, v.n_quarantined) for v in list_versions(built, "d")] == \
        [(1, 1), (2, 0), (3, 0)]


def test_version_members_in_source_order(built, numbered_id):
    assert version_sample_ids(built, "d", 1) == [numbered_id(i) for i in range(10)]
    # v3 keeps v2's members from v2.jsonl and adds v3.jsonl's; order is by file, then line
    assert version_sample_ids(built, "d", 3) == [numbered_id(i) for i in
                                                 [*range(5, 15), 20, 21]]


def test_load_samples_pages_and_searches(built, numbered_id):
    page = load_samples(built, "d", 1, limit=3, offset=4)
    assert [(s.sample_id, s.prompt, s.response, s.metadata) for s in page] == [
        (numbered_id(i), f"prompt {i}", f"answer {i}", {"n": i}) for i in (4, 5, 6)]
    assert page[0].messages == ({"role": "user", "content": "prompt 4"},
                                {"role": "assistant", "content": "answer 4"})
    assert load_samples(built, "d", 1, limit=5, offset=10) == []
    assert [s.prompt for s in load_samples(built, "d", 3, search="PROMPT 2")] == \
        ["prompt 20", "prompt 21"]
    assert [s.prompt for s in load_samples(built, "d", 1, search="answer 7")] == ["prompt 7"]
    assert [s.prompt for s in load_samples(built, "d", 3, search="1", limit=2, offset=1)] == \
        ["prompt 11", "prompt 12"]
    assert load_samples(built, "d", 1, search="nothing like it") == []


def test_iter_samples_in_batches(built):
    sizes = [len(b) for b in iter_samples(built, "d", 3, batch_size=5)]
    assert sizes == [5, 5, 2]
    ids = [s.sample_id for b in iter_samples(built, "d", 3, batch_size=5) for s in b]
    assert ids == version_sample_ids(built, "d", 3)


def test_get_samples_by_id(built, numbered_id):
    got = get_samples(built, [numbered_id(3), numbered_id(20), "no-such-id"])
    assert set(got) == {numbered_id(3), numbered_id(20)}
    assert (got[numbered_id(3)].prompt, got[numbered_id(3)].metadata) == ("prompt 3", {})
    assert get_samples(built, []) == {}


def test_diff_versions(built, numbered_id):
    d = diff_versions(built, "d", 1, 3, limit=3)
    assert (d.dataset, d.old, d.new, d.n_added, d.n_removed, d.n_unchanged) == \
        ("d", 1, 3, 7, 5, 5)
    assert d.added == sorted(numbered_id(i) for i in (10, 11, 12, 13, 14, 20, 21))[:3]
    assert d.removed == sorted(numbered_id(i) for i in range(5))[:3]
    same = diff_versions(built, "d", "v2", "2")
    assert (same.n_added, same.n_removed, same.n_unchanged, same.added, same.removed) == \
        (0, 0, 10, [], [])
    latest = diff_versions(built, "d", 2, None)
    assert (latest.new, latest.n_added, latest.n_removed) == (3, 2, 0)
    with pytest.raises(NotFound, match="has no version 9"):
        diff_versions(built, "d", 1, 9)


def test_quarantine_rows(built):
    (row,) = quarantine_rows(built, "d")
    assert (row["version"], row["line"], row["raw"]) == (1, 11, "{broken")
    assert row["reason"].startswith("malformed JSON: ")
    assert quarantine_rows(built, "d", version=2) == []
    assert quarantine_rows(built, "e") == []


def test_latest_version_and_new_members(store, write_jsonl):
    from curator.ingestion.ingest import ingest
    from curator.store.datasets import count_new_members, latest_version

    assert latest_version(store, "d") is None
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(5)]
    first = write_jsonl("a.jsonl", rows[:3])
    ingest(store, first, "d")
    ingest(store, write_jsonl("b.jsonl", rows[2:]), "d", append=True)
    assert latest_version(store, "d") == 2
    assert latest_version(store, "d", source=first) == 1 and latest_version(store, "d", "x") is None
    assert count_new_members(store, "d", 1, 2) == 2               # q3, q4
    assert count_new_members(store, "d", 2, 1) == 0
