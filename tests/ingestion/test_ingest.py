"""Ingest: every row is counted (read = accepted + duplicates + quarantined), bad rows are
quarantined with line and reason, duplicates are stored once, and a failed ingest leaves no
half version behind."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curator.ingestion.ingest as ingest_mod
from curator.ingestion.ingest import IngestError, IngestSummary, ingest
from curator.ingestion.schemas import FieldMap
from curator.records import sample_id_for
from curator.store.datasets import (
    diff_versions,
    list_versions,
    load_samples,
    quarantine_rows,
    version_sample_ids,
)
from tests import helpers


def pair(i: int | str) -> dict[str, str]:
    return {"prompt": f"p{i}", "response": f"r{i}"}


def sid(i: int | str) -> str:
    return sample_id_for([{"role": "user", "content": f"p{i}"},
                          {"role": "assistant", "content": f"r{i}"}])


def counts(s: IngestSummary) -> tuple[int, int, int, int]:
    assert s.n_read == s.n_accepted + s.n_duplicates + s.n_quarantined
    return s.n_read, s.n_accepted, s.n_duplicates, s.n_quarantined


def quarantined(store, dataset="d") -> list[tuple]:
    return [(r["line"], r["reason"]) for r in quarantine_rows(store, dataset)]


def table_count(store, table: str) -> int:
    return store.query(f"SELECT count(*) FROM {table}")[0][0]


# -- bad input: each bad row quarantined with its line and reason ---------------------------


def test_every_bad_jsonl_row_is_quarantined_with_line_and_reason(store, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(pair(1)).encode(),                              # 1 ok
        b'{"prompt": "p2", "response": ',                          # 2 malformed
        json.dumps({"prompt": "p3"}).encode(),                     # 3 missing field
        json.dumps({"prompt": "p4", "response": ""}).encode(),     # 4 empty field
        b'{"prompt": "p\xff5", "response": "r5"}',                 # 5 not UTF-8
        json.dumps({"prompt": 6, "response": "r6"}).encode(),      # 6 wrong type
        b"",                                                       # 7 blank: skipped
        json.dumps([1]).encode(),                                  # 8 not an object
        json.dumps({"text": "t"}).encode(),                        # 9 no known schema
        json.dumps(pair(1)).encode(),                              # 10 duplicate of 1
        json.dumps(pair(11)).encode(),                             # 11 ok
    ]) + b"\n")
    summary = ingest(store, str(path), "d")
    assert counts(summary) == (10, 2, 1, 7)
    assert quarantined(store) == [
        (2, "malformed JSON: Expecting value"),
        (3, "missing field 'response'"),
        (4, "field 'response' is empty"),
        (5, "not valid UTF-8 (byte 13)"),
        (6, "field 'prompt' must be text, got int"),
        (8, "expected a JSON object, got list"),
        (9, "no known schema (fields: text); use --prompt-field and --response-field"),
    ]
    assert quarantine_rows(store, "d")[0]["raw"] == '{"prompt": "p2", "response":'
    assert quarantine_rows(store, "d")[0]["source_file"] == str(path)
    assert version_sample_ids(store, "d", 1) == [sid(1), sid(11)]
    assert summary.lines() == [
        "dataset d: version 1 (snapshot)",
        "  rows read 10: accepted 2, duplicates 1, quarantined 7",
        "  version: added 2, removed 0, unchanged 0, members 2",
        "  quarantined 1: malformed JSON",
        "  quarantined 1: missing field 'response'",
        "  quarantined 1: field 'response' is empty",
        "  quarantined 1: not valid UTF-8",
        "  quarantined 1: field 'prompt' must be text, got int",
        "  +2 more reasons (2 rows): curator show -d d --quarantine lists them all",
    ]
    (version,) = list_versions(store, "d")
    assert (version.n_read, version.n_accepted, version.n_duplicates, version.n_quarantined) == \
        (10, 2, 1, 7)


def test_bad_csv_rows_are_quarantined(store, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"prompt,response\n"
                     b"p1,r1\n"
                     b"p2,r2,extra\n"
                     b"caf\xe9,r3\n"
                     b"p4,\n"
                     b",,\n"
                     b"p1,r1\n"
                     b'"p6\nsecond",r6\n')
    summary = ingest(store, str(path), "d")
    # ",," is a record with empty fields: counted and quarantined (it used to vanish uncounted)
    assert counts(summary) == (7, 2, 1, 4)
    assert quarantined(store) == [(3, "expected 2 fields, got 3"), (4, "not valid UTF-8"),
                                  (5, "field 'response' is empty"), (6, "every field is empty")]
    assert [s.prompt for s in load_samples(store, "d", 1)] == ["p1", "p6\nsecond"]


def _bad_utf8_table():
    import pyarrow as pa

    raw = pa.array([b"p1", b"bad \xed\xa0\x80", b"p3"], pa.binary())
    return pa.table({"prompt": pa.Array.from_buffers(pa.string(), 3, raw.buffers()),
                     "response": ["r1", "r2", "r3"]})


def _write_bad(tmp_path, fmt: str) -> str:
    """Three rows, the middle one holding text the store cannot encode."""
    if fmt == "jsonl":
        path = tmp_path / "a.jsonl"
        path.write_text('{"prompt": "p1", "response": "r1"}\n'
                        '{"prompt": "p2", "response": "r2", "meta": "\\ud800"}\n'
                        '{"prompt": "p3", "response": "r3"}\n')
    elif fmt == "json":
        path = tmp_path / "a.json"
        path.write_text('[{"prompt": "p1", "response": "r1"}, '
                        '{"prompt": "p2", "response": "r2 \\udc00"}, '
                        '{"prompt": "p3", "response": "r3"}]')
    elif fmt == "csv":
        path = tmp_path / "a.csv"
        path.write_bytes(b"prompt,response\np1,r1\np2 \xed\xa0\x80,r2\np3,r3\n")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        path = tmp_path / "a.parquet"
        pq.write_table(_bad_utf8_table(), path)
    else:
        from datasets import Dataset

        path = tmp_path / "ds"
        Dataset(_bad_utf8_table()).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("fmt, line, reason", [
    ("jsonl", 2, "lone surrogate \\ud800 in field 'meta' (not encodable as UTF-8)"),
    ("json", 2, "lone surrogate \\udc00 in field 'response' (not encodable as UTF-8)"),
    ("csv", 3, "not valid UTF-8"),
    ("parquet", 2, "not valid UTF-8 in field 'prompt'"),
    ("hf", 2, "not valid UTF-8 in field 'prompt'"),
])
def test_text_the_store_cannot_encode_quarantines_its_row_only(store, tmp_path, fmt, line,
                                                               reason):
    """A lone surrogate (or its UTF-8 bytes) used to abort the whole ingest with
    "'utf-8' codec can't encode character" and no file or line."""
    source = _write_bad(tmp_path, fmt)
    summary = ingest(store, source, "d")
    assert counts(summary) == (3, 2, 0, 1)
    [row] = quarantine_rows(store, "d")
    assert (row["source_file"], row["line"], row["reason"]) == (source, line, reason)
    assert [s.prompt for s in load_samples(store, "d", 1)] == ["p1", "p3"]


@pytest.mark.parametrize("content, reason", [
    pytest.param(b"", "empty.jsonl is empty", id="empty-file"),
    pytest.param(b"\n\n  \n", "empty.jsonl: no rows found", id="only-blank-lines"),
    pytest.param(b'{"prompt": "p"}\n{"x": 1}\n',
                 "empty.jsonl: no usable rows (2 quarantined: 1 missing field 'response'; "
                 "1 no known schema (fields: x); use --prompt-field and --response-field)",
                 id="no-usable-row"),
    pytest.param(b"not json\n", "empty.jsonl: no usable rows (1 quarantined: 1 malformed JSON)",
                 id="all-malformed"),
])
def test_input_without_usable_rows_fails_and_creates_no_version(store, tmp_path, content, reason):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(IngestError) as info:
        ingest(store, str(path), "d")
    assert str(info.value).endswith(reason)
    assert "\n" not in str(info.value)
    if store.exists:
        assert table_count(store, "versions") == 0
        assert table_count(store, "ingest_staging") == 0
        assert table_count(store, "quarantine") == 0  # staged quarantine of a failed run goes too


def test_header_only_csv_has_no_rows(store, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("prompt,response\n")
    with pytest.raises(IngestError, match=r"a\.csv: no rows found$"):
        ingest(store, str(path), "d")


def test_missing_file_and_unknown_format(store, tmp_path):
    with pytest.raises(IngestError, match=r"^no such file or folder: .*nope\.jsonl$"):
        ingest(store, str(tmp_path / "nope.jsonl"), "d")
    (tmp_path / "data.txt").write_text("prompt: p\n")
    with pytest.raises(IngestError, match=r"^unknown format for .*data\.txt: use one of"):
        ingest(store, str(tmp_path / "data.txt"), "d")
    assert table_count(store, "versions") == 0
    assert [r["status"] for r in store.runs()] == ["failed"]


# -- every reader and schema end to end -----------------------------------------------------


def test_every_format_and_schema_through_ingest(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    folder = tmp_path / "in"
    folder.mkdir()
    helpers.write_jsonl(folder / "a.jsonl", [
        {"instruction": "i1", "input": "x", "output": "o1", "id": 1},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u2"},
                      {"role": "assistant", "content": "a2"}]},
    ])
    (folder / "b.json").write_text(json.dumps({"data": [
        {"conversations": [{"from": "human", "value": "u3"}, {"from": "gpt", "value": "a3"}]},
        {"question": "q4", "answer": "a4", "level": "easy"},
    ]}))
    (folder / "c.csv").write_text("prompt,completion\np5,c5\n")
    (folder / "d.tsv").write_text("instruction\tcontext\tresponse\ni6\tctx\tr6\n")
    pq.write_table(pa.table({"prompt": ["p7"], "response": ["r7"], "w": [0.5]}),
                   folder / "e.parquet")
    summary = ingest(store, str(folder), "d")
    assert counts(summary) == (7, 7, 0, 0)
    assert summary.files == [str(folder / n) for n in
                             ("a.jsonl", "b.json", "c.csv", "d.tsv", "e.parquet")]
    got = [(s.prompt, s.response, s.metadata) for s in load_samples(store, "d", 1)]
    assert got == [
        ("i1\n\nx", "o1", {"id": 1}),
        ("system: s\n\nuser: u2", "a2", {}),
        ("u3", "a3", {}),
        ("q4", "a4", {"level": "easy"}),
        ("p5", "c5", {}),
        ("i6\n\nctx", "r6", {}),
        ("p7", "r7", {"w": 0.5}),
    ]

    Dataset.from_list([{"q": "hq", "a": "ha", "n": 1}]).save_to_disk(str(tmp_path / "hf"))
    summary = ingest(store, str(tmp_path / "hf"), "hf", fields=FieldMap(prompt="q", response="a"))
    assert counts(summary) == (1, 1, 0, 0)
    (s,) = load_samples(store, "hf", 1)
    assert (s.prompt, s.response, s.metadata) == ("hq", "ha", {"n": 1})


# -- duplicates -----------------------------------------------------------------------------


def test_duplicates_within_and_across_batches_are_stored_once(store, write_jsonl):
    rows = [pair(i % 7) for i in range(30)]  # 7 distinct, repeated across batches of 4
    summary = ingest(store, write_jsonl("a.jsonl", rows), "d", batch_size=4)
    assert counts(summary) == (30, 7, 23, 0)
    assert table_count(store, "samples") == 7
    members = store.query("SELECT sample_id, source_line FROM version_members ORDER BY 2")
    assert members == [(sid(i), i + 1) for i in range(7)]  # the first occurrence is kept


def test_same_content_in_two_datasets_is_one_sample(store, write_jsonl):
    ingest(store, write_jsonl("a.jsonl", [pair(1) | {"src": "a"}]), "a")
    ingest(store, write_jsonl("b.jsonl", [pair(1) | {"src": "b"}]), "b")
    assert table_count(store, "samples") == 1
    assert load_samples(store, "a", 1)[0].metadata == {"src": "a"}
    assert load_samples(store, "b", 1)[0].metadata == {"src": "b"}



def test_ingests_in_two_threads_store_each_sample_once(store, write_jsonl):
    # samples has no primary key (DuckDB would keep its index in memory); ingest dedupes
    # itself, also against a second ingest of the same process writing at the same time.
    import threading

    store.init()
    rows = [pair(i) for i in range(60)]
    sources = [write_jsonl("a.jsonl", rows), write_jsonl("b.jsonl", rows[::-1])]
    errors: list[BaseException] = []

    def run(source: str, dataset: str) -> None:
        try:
            ingest(store, source, dataset, batch_size=5)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(src, name))
               for src, name in zip(sources, ("a", "b"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.query("SELECT count(*), count(DISTINCT sample_id) FROM samples") == [(60, 60)]
    assert store.query("SELECT dataset, count(*), count(DISTINCT sample_id) FROM "
                       "version_members GROUP BY 1 ORDER BY 1") == [("a", 60, 60), ("b", 60, 60)]


# -- versions: snapshot and append ----------------------------------------------------------


def test_snapshot_and_append_versions(store, write_jsonl):
    s1 = ingest(store, write_jsonl("v1.jsonl", [pair(i) for i in range(10)]), "d")
    assert (s1.version, s1.parent, s1.n_added, s1.n_removed, s1.n_unchanged, s1.n_members) == \
        (1, None, 10, 0, 0, 10)
    # snapshot: exactly the input (0-4 dropped, 5-9 kept, 10-14 new)
    s2 = ingest(store, write_jsonl("v2.jsonl", [pair(i) for i in range(5, 15)]), "d")
    assert (s2.version, s2.parent, s2.n_added, s2.n_removed, s2.n_unchanged, s2.n_members) == \
        (2, 1, 5, 5, 5, 10)
    assert s2.lines()[0] == "dataset d: version 2 (snapshot on version 1)"
    # append: previous members stay; a repeated member is unchanged
    s3 = ingest(store, write_jsonl("v3.jsonl", [pair(i) for i in (14, 15, 16)]), "d",
                append=True, message="more")
    assert (s3.version, s3.parent, s3.n_added, s3.n_removed, s3.n_unchanged, s3.n_members) == \
        (3, 2, 2, 0, 10, 12)
    assert s3.lines()[0] == "dataset d: version 3 (append on version 2)"
    assert set(version_sample_ids(store, "d", 3)) == {sid(i) for i in range(5, 17)}

    infos = list_versions(store, "d")
    assert [(v.version, v.parent, v.mode, v.n_members, v.n_added, v.n_removed, v.n_unchanged,
             v.message) for v in infos] == [
        (1, None, "snapshot", 10, 10, 0, 0, None),
        (2, 1, "snapshot", 10, 5, 5, 5, None),
        (3, 2, "append", 12, 2, 0, 10, "more"),
    ]
    # adjacent and non-adjacent diffs agree with the version rows
    d12 = diff_versions(store, "d", 1, 2)
    assert (d12.n_added, d12.n_removed, d12.n_unchanged) == (5, 5, 5)
    d13 = diff_versions(store, "d", 1, 3)
    assert (d13.n_added, d13.n_removed, d13.n_unchanged) == (7, 5, 5)
    assert d13.added == sorted(sid(i) for i in range(10, 17))
    assert d13.removed == sorted(sid(i) for i in range(5))
    d31 = diff_versions(store, "d", 3, 1, limit=2)
    assert (d31.n_added, d31.n_removed, d31.n_unchanged) == (5, 7, 5)
    assert d31.added == sorted(sid(i) for i in range(5))[:2]


def test_append_to_an_empty_dataset_is_a_first_version(store, write_jsonl):
    s = ingest(store, write_jsonl("a.jsonl", [pair(1)]), "d", append=True)
    assert (s.version, s.parent, s.mode, s.n_added, s.n_members) == (1, None, "append", 1, 1)


def test_metadata_is_kept_per_membership(store, write_jsonl):
    ingest(store, write_jsonl("v1.jsonl", [pair(1) | {"tag": "old"}, pair(2) | {"tag": "two"}]),
           "d")
    ingest(store, write_jsonl("v2.jsonl", [pair(1) | {"tag": "new"}, pair(3)]), "d", append=True)
    meta = {s.prompt: s.metadata for s in load_samples(store, "d", 2)}
    assert meta == {"p1": {"tag": "new"}, "p2": {"tag": "two"}, "p3": {}}
    assert {s.prompt: s.metadata for s in load_samples(store, "d", 1)} == \
        {"p1": {"tag": "old"}, "p2": {"tag": "two"}}


def test_quarantine_belongs_to_its_version(store, write_jsonl):
    ingest(store, write_jsonl("v1.jsonl", [pair(1), "bad"]), "d")
    ingest(store, write_jsonl("v2.jsonl", [pair(2), {"prompt": "x"}, "also bad"]), "d")
    assert [(r["version"], r["line"]) for r in quarantine_rows(store, "d")] == \
        [(1, 2), (2, 2), (2, 3)]
    assert [r["line"] for r in quarantine_rows(store, "d", version=2)] == [2, 3]


def test_progress_is_reported_per_batch(store, write_jsonl):
    seen: list[int] = []
    ingest(store, write_jsonl("a.jsonl", [pair(i) for i in range(10)]), "d", batch_size=4,
           progress=seen.append)
    assert seen == [4, 8, 10]


# -- a crash half way -----------------------------------------------------------------------


def test_crash_half_way_leaves_no_half_version(store, write_jsonl, monkeypatch):
    ingest(store, write_jsonl("v1.jsonl", [pair(i) for i in range(5)]), "d")
    source = write_jsonl("v2.jsonl", [pair(i) for i in range(20)] + ["bad"] * 3)
    real_stage = ingest_mod._stage_batch
    calls = []

    def crashing_stage(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            # Before crashing, the first two batches are committed in staging.
            assert table_count(store, "ingest_staging") == 8
            raise RuntimeError("disk on fire")
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "_stage_batch", crashing_stage)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(store, source, "d", batch_size=4)
    assert [v.version for v in list_versions(store, "d")] == [1]
    assert table_count(store, "ingest_staging") == 0
    assert store.query("SELECT count(*) FROM quarantine WHERE version IS NULL")[0][0] == 0
    failed = store.runs(limit=1)[0]
    assert (failed["status"], failed["error"], failed["done"]) == ("failed", "disk on fire", 8)

    monkeypatch.setattr(ingest_mod, "_stage_batch", real_stage)
    s = ingest(store, source, "d", batch_size=4)
    assert (s.version, counts(s), s.n_added, s.n_unchanged) == (2, (23, 20, 0, 3), 15, 5)
    assert [r["status"] for r in store.runs()] == ["done", "failed", "done"]


def test_staging_of_an_abandoned_run_is_cleared_by_the_next_ingest(store, write_jsonl):
    store.init()
    run = store.start_run("ingest", "d")
    with store.atomic() as con:
        con.execute("INSERT INTO ingest_staging VALUES (?, 'x', NULL, 'f', 1)", [run])
        con.execute("INSERT INTO quarantine VALUES (?, 'd', NULL, 'f', 2, 'bad', 'raw')", [run])
        # A run written before runs knew their host: an hour without progress is abandoned.
        # (Runs with a host are recovered by pid as the store opens: tests/store/test_recovery.)
        con.execute("UPDATE runs SET updated_at = current_timestamp - INTERVAL 2 HOUR, "
                    "host = NULL")
    ingest(store, write_jsonl("a.jsonl", [pair(1)]), "d")
    assert store.query("SELECT sample_id FROM ingest_staging") == []
    assert quarantine_rows(store, "d") == []
    assert (store.get_run(run)["status"], store.get_run(run)["error"]) == \
        ("failed", "abandoned (process gone)")


# -- round trip: text comes back exactly ----------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda t: t.strip() != "")
EXTRA = st.sampled_from(["", "\n", "\r\n", ",", '"', "'", "\t", " ", "\\", "é", "😀", "\u2028"])
FIELD = st.builds(lambda a, b, c: a + b + c, EXTRA, TEXT, EXTRA)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_round_trips_exactly(tmp_path, fmt):
    from curator.store import Store

    store = Store(tmp_path / "store")  # shared by the examples: each one is its own dataset
    examples = iter(range(1_000))

    @settings(max_examples=8, deadline=None)
    @given(pairs=st.lists(st.tuples(FIELD, FIELD), min_size=1, max_size=20))
    def round_trip(pairs):
        n = next(examples)
        # A running index makes every row distinct, so nothing is a duplicate.
        rows = [(f"{i}:{p}", r) for i, (p, r) in enumerate(pairs)]
        path = tmp_path / f"in{n}.{fmt}"
        if fmt == "jsonl":
            helpers.write_jsonl(path, [{"prompt": p, "response": r} for p, r in rows])
        else:
            with path.open("w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["prompt", "response"])
                writer.writerows(rows)
        summary = ingest(store, str(path), f"d{n}")
        assert counts(summary) == (len(rows), len(rows), 0, 0)
        assert [(s.prompt, s.response) for s in load_samples(store, f"d{n}", 1)] == rows

    round_trip()


def test_an_empty_or_corrupt_file_in_a_folder_is_quarantined_and_the_rest_ingested(
        store, tmp_path):
    """Issue 28: one empty or corrupt file stopped a whole folder ingest, while a file of
    only malformed lines was handled row by row (and schedules quarantine such files)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(pair(1)) + "\n")
    (folder / "b.jsonl").write_text("")
    (folder / "c.parquet").write_bytes(b"PAR1 not really")
    (folder / "d.json").write_text("{broken")
    (folder / "e.jsonl").write_text("not json\n" + json.dumps(pair(2)) + "\n")
    summary = ingest(store, str(folder), "d")
    assert counts(summary) == (6, 2, 0, 4)
    rows = {r["source_file"]: r["reason"] for r in quarantine_rows(store, "d")}
    assert rows[str(folder / "b.jsonl")] == "empty file"
    assert rows[str(folder / "c.parquet")].startswith(
        f"unreadable file: {folder / 'c.parquet'} is not a readable Parquet file")
    assert rows[str(folder / "d.json")].startswith(
        f"unreadable file: {folder / 'd.json'} is not valid JSON")
    assert "  quarantined 2: unreadable file" in summary.lines()
    # a single empty file is still an error of its own
    with pytest.raises(IngestError, match=r"b\.jsonl is empty$"):
        ingest(store, str(folder / "b.jsonl"), "d2")


def test_the_summary_says_how_many_more_reasons_there_are():
    """Only the five most common reasons were listed, with no word of the rest (9 rows
    quarantined, lines adding to 6)."""
    from collections import Counter

    s = IngestSummary("d", 1, None, "snapshot", [], n_read=9, n_quarantined=9,
                      reasons=Counter({"a": 3, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1}))
    lines = s.lines()
    assert lines[3:] == ["  quarantined 3: a", "  quarantined 1: b", "  quarantined 1: c",
                         "  quarantined 1: d", "  quarantined 1: e",
                         "  +2 more reasons (2 rows): curator show -d d --quarantine lists "
                         "them all"]
    assert sum(int(x.split()[1].rstrip(":")) for x in lines[3:8]) + 2 == 9
