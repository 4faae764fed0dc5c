"""Readers: every format yields rows with file and line; bad rows carry a reason, never raise."""

from __future__ import annotations

import json

import pytest

from curator.ingestion import readers
from curator.ingestion.readers import (
    InputError,
    RawRow,
    input_files,
    read_csv,
    read_file,
    read_json,
    read_jsonl,
    read_parquet,
    read_source,
)

PAIR = {"prompt": "p", "response": "r"}


def rows_of(it) -> list[tuple]:
    return [(r.line, r.data, r.error) for r in it]


# -- JSONL ----------------------------------------------------------------------------------


def test_jsonl_rows_keep_line_numbers_and_skip_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "p1", "response": "r1"}\n\n   \n{"prompt": "p2", "response": "r2"}\n')
    rows = list(read_jsonl(path))
    assert rows == [
        RawRow(str(path), 1, {"prompt": "p1", "response": "r1"},
               '{"prompt": "p1", "response": "r1"}'),
        RawRow(str(path), 4, {"prompt": "p2", "response": "r2"},
               '{"prompt": "p2", "response": "r2"}'),
    ]


def test_jsonl_bad_rows_carry_reason_and_raw(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "r"}\n'
                     b'{"prompt": "p", \n'
                     b'{"prompt": "caf\xe9", "response": "r"}\n'
                     b'[1, 2]\n'
                     b'"text"\n')
    rows = list(read_jsonl(path))
    assert [(r.line, r.error) for r in rows] == [
        (1, None),
        (2, "malformed JSON: Expecting property name enclosed in double quotes"),
        (3, "not valid UTF-8 (byte 15)"),
        (4, "expected a JSON object, got list"),
        (5, "expected a JSON object, got str"),
    ]
    assert rows[1].raw == '{"prompt": "p",'
    assert rows[2].raw == '{"prompt": "caf\\xe9", "response": "r"}'
    assert all(r.data is None for r in rows[1:])


def test_long_raw_text_is_shortened(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("x" * 2500 + "\n")
    (row,) = read_jsonl(path)
    assert row.raw == "x" * 2000 + "... [500 more chars]"


# -- JSON -----------------------------------------------------------------------------------


def test_json_list_of_records(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([PAIR, {"prompt": "p2", "response": "r2"}, 3]))
    assert rows_of(read_json(path)) == [
        (1, PAIR, None),
        (2, {"prompt": "p2", "response": "r2"}, None),
        (3, None, "expected a JSON object, got int"),
    ]


def test_json_object_with_one_list_of_records_is_unwrapped(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"version": "1.0", "data": [PAIR, PAIR]}))
    assert rows_of(read_json(path)) == [(1, PAIR, None), (2, PAIR, None)]


def test_json_single_record_with_chat_turns_is_one_record(tmp_path):
    record = {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"}], "tags": ["a", "b"]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(record))
    assert rows_of(read_json(path)) == [(1, record, None)]
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path.write_text(json.dumps(sharegpt))
    assert rows_of(read_json(path)) == [(1, sharegpt, None)]


def test_json_lines_file_named_json_is_read_as_jsonl(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(PAIR) + "\n\n" + json.dumps({"prompt": "x", "response": "y"}) + "\n")
    assert rows_of(read_json(path)) == [(1, PAIR, None), (3, {"prompt": "x", "response": "y"}, None)]


def test_json_whole_file_errors(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"prompt": "p"')
    with pytest.raises(InputError, match=r"a.json is not valid JSON: Expecting ',' delimiter at line 1"):
        list(read_json(path))
    path.write_bytes(b'[{"prompt": "\xff"}]')
    with pytest.raises(InputError, match=r"a.json is not valid UTF-8 \(byte 13\)"):
        list(read_json(path))
    path.write_text("42")
    with pytest.raises(InputError, match="expected a list of records, got int"):
        list(read_json(path))


# -- CSV / TSV ------------------------------------------------------------------------------


def test_csv_rows_with_header_quoting_and_multiline_fields(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('\ufeffprompt,response,topic\n'
                    'p1,r1,math\n'
                    '"p2, with comma","r2\nsecond line",code\n'
                    ',,\n'
                    'p3,"say ""hi""",chat\n', encoding="utf-8")
    assert rows_of(read_csv(path)) == [
        (2, {"prompt": "p1", "response": "r1", "topic": "math"}, None),
        (3, {"prompt": "p2, with comma", "response": "r2\nsecond line", "topic": "code"}, None),
        (5, None, "every field is empty"),
        (6, {"prompt": "p3", "response": 'say "hi"', "topic": "chat"}, None),
    ]


def test_csv_wrong_column_count_and_bad_bytes(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"prompt,response\n"
                     b"p1,r1\n"
                     b"p2,r2,extra\n"
                     b"only\n"
                     b"caf\xe9,r4\n"
                     b"p5,r5\n")
    rows = list(read_csv(path))
    assert [(r.line, r.error) for r in rows] == [
        (2, None),
        (3, "expected 2 fields, got 3"),
        (4, "expected 2 fields, got 1"),
        (5, "not valid UTF-8"),
        (6, None),
    ]
    assert rows[1].raw == "p2,r2,extra"
    assert rows[3].raw == "caf\\xe9,r4"


def test_csv_header_only_yields_nothing(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("prompt,response\n")
    assert list(read_csv(path)) == []


def test_tsv(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("question\tanswer\nq, 1\ta, 1\n")
    assert rows_of(read_file(path)) == [(2, {"question": "q, 1", "answer": "a, 1"}, None)]


# -- Parquet --------------------------------------------------------------------------------


def test_parquet_rows_are_numbered_across_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(5)],
                             "response": [f"r{i}" for i in range(5)],
                             "score": [0.5, 1.0, None, 2.0, 3.5]}), path)
    rows = list(read_parquet(path, batch_size=2))
    assert [(r.line, r.data) for r in rows] == [
        (i + 1, {"prompt": f"p{i}", "response": f"r{i}", "score": s})
        for i, s in enumerate([0.5, 1.0, None, 2.0, 3.5])
    ]
    assert rows[0].raw == '{"prompt": "p0", "response": "r0", "score": 0.5}'


def test_corrupt_parquet_is_an_input_error(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="a.parquet is not a readable Parquet file"):
        list(read_file(path))


# -- folders, saved HF datasets, hub names, whole-input errors ------------------------------


def test_folder_of_mixed_files_in_sorted_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "b.jsonl").write_text(json.dumps({"prompt": "b", "response": "rb"}) + "\n")
    (folder / "a.csv").write_text("prompt,response\na,ra\n")
    (folder / "sub" / "c.json").write_text(json.dumps([{"prompt": "c", "response": "rc"}]))
    pq.write_table(pa.table({"prompt": ["d"], "response": ["rd"]}), folder / "d.parquet")
    (folder / "e.tsv").write_text("prompt\tresponse\ne\tre\n")
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden" / "x.jsonl").write_text("ignored\n")
    files, rows = read_source(str(folder))
    names = ["a.csv", "b.jsonl", "d.parquet", "e.tsv", "sub/c.json"]
    assert files == [str(folder / n) for n in names]
    assert [(r.file, r.line, r.data["prompt"]) for r in rows] == [
        (str(folder / "a.csv"), 2, "a"), (str(folder / "b.jsonl"), 1, "b"),
        (str(folder / "d.parquet"), 1, "d"), (str(folder / "e.tsv"), 2, "e"),
        (str(folder / "sub/c.json"), 1, "c"),
    ]


def test_folder_without_known_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="holds no .jsonl, .json, .csv, .tsv or .parquet file"):
        input_files(tmp_path)


def test_saved_hf_dataset(tmp_path):
    from datasets import Dataset, DatasetDict

    records = [{"instruction": "i1", "input": "", "output": "o1", "id": 1},
               {"instruction": "i2", "input": "x", "output": "o2", "id": 2}]
    Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    files, rows = read_source(str(tmp_path / "ds"))
    assert files == [str(tmp_path / "ds")]
    assert [(r.line, r.data) for r in rows] == [(1, records[0]), (2, records[1])]

    DatasetDict({"train": Dataset.from_list(records[:1]),
                 "test": Dataset.from_list(records[1:])}).save_to_disk(str(tmp_path / "dd"))
    _, rows = read_source(str(tmp_path / "dd"), split="test")
    assert [r.data for r in rows] == [records[1]]
    _, rows = read_source(str(tmp_path / "dd"), split="validation")
    with pytest.raises(InputError, match="has splits train, test; pick one with --split"):
        list(rows)


def test_hub_names_are_read_only_when_asked_for(tmp_path, monkeypatch):
    """`foo/bar` is a path: missing, it fails at once; hub:NAME (or hub=True) asks the hub."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    looked_up = []
    monkeypatch.setattr(readers, "hub_lookup", looked_up.append)
    with pytest.raises(InputError) as info:
        read_source("someorg/somedata")
    assert str(info.value) == ("no such file or folder: someorg/somedata (for a Hugging Face "
                               "hub data set use hub:someorg/somedata or --hub)")
    with pytest.raises(InputError, match=r"^no such file or folder: data/train\.jsonl$"):
        read_source("data/train.jsonl")
    assert looked_up == []
    files, rows = read_source("hub:someorg/somedata")  # lazy: no load until iterated
    assert files == ["hub:someorg/somedata"]
    rows.close()
    files, rows = read_source("someorg/somedata", hub=True)
    assert files == ["hub:someorg/somedata"]
    rows.close()
    assert looked_up == ["someorg/somedata", "someorg/somedata"]


def test_an_unreachable_hub_fails_at_once_with_one_line(monkeypatch):
    def offline(name):
        raise ConnectionError(f"cannot connect to huggingface.co\n  (while asking for {name})")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(readers, "hub_lookup", offline)
    with pytest.raises(InputError) as info:
        read_source("hub:someorg/somedata")
    assert str(info.value) == ("cannot load 'someorg/somedata' from the Hugging Face hub: "
                               "cannot connect to huggingface.co")


# -- byte order marks, empty records, text the store cannot hold ----------------------------


def test_a_utf8_bom_is_not_part_of_the_first_row(tmp_path):
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "a.jsonl"
    path.write_bytes(bom + b'{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "s"}\n')
    assert rows_of(read_jsonl(path)) == [(1, PAIR, None),
                                         (2, {"prompt": "q", "response": "s"}, None)]
    path = tmp_path / "a.json"
    path.write_bytes(bom + json.dumps([PAIR]).encode())
    assert rows_of(read_json(path)) == [(1, PAIR, None)]
    path.write_bytes(bom + b'{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "s"}')
    assert [r.data for r in read_json(path)] == [PAIR, {"prompt": "q", "response": "s"}]


def test_csv_records_with_only_empty_fields_are_quarantined_not_dropped(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("prompt,response\np,r\n,\n \t, \n\n\"\",\"\"\n")
    assert rows_of(read_csv(path)) == [(2, PAIR, None), (3, None, "every field is empty"),
                                       (4, None, "every field is empty"),
                                       (6, None, "every field is empty")]  # line 5 is blank


def test_lone_surrogates_become_bad_rows_in_every_format(tmp_path):
    """json.loads accepts "\\ud800"; the store cannot encode it, so the row is quarantined
    (it used to abort the whole ingest) and its raw text is kept, escaped."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n'
                    '{"prompt": "bad \\ud800", "response": "r"}\n'
                    '{"prompt": "p", "response": "r", "meta": {"tags": ["x", "\\udfff"]}}\n')
    _, rows = read_source(str(path))
    rows = list(rows)
    assert [(r.line, r.error) for r in rows] == [
        (1, None),
        (2, "lone surrogate \\ud800 in field 'prompt' (not encodable as UTF-8)"),
        (3, "lone surrogate \\udfff in field 'meta.tags[1]' (not encodable as UTF-8)")]
    assert rows[1].raw == '{"prompt": "bad \\ud800", "response": "r"}'
    assert all(r.raw.encode("utf-8") for r in rows)

    path = tmp_path / "a.json"
    path.write_text('[{"prompt": "p", "response": "r"}, {"prompt": "\\ud83d", "response": "r"}]')
    rows = list(read_source(str(path))[1])
    assert [(r.line, r.error) for r in rows] == [
        (1, None), (2, "lone surrogate \\ud83d in field 'prompt' (not encodable as UTF-8)")]
    assert rows[1].raw == '{"prompt": "\\ud83d", "response": "r"}'

    path = tmp_path / "a.csv"  # a surrogate encoded as UTF-8 bytes is invalid UTF-8
    path.write_bytes(b"prompt,response\np,r\nbad \xed\xa0\x80,r\n")
    assert [(r.line, r.error) for r in read_source(str(path))[1]] == [
        (2, None), (3, "not valid UTF-8")]


def _arrow_with_bad_utf8():
    """A table whose string column holds the UTF-8 bytes of a surrogate (Arrow does not
    check; other writers can produce this)."""
    import pyarrow as pa

    raw = pa.array([b"p", b"bad \xed\xa0\x80", b"q"], pa.binary())
    prompt = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    return pa.table({"prompt": prompt, "response": ["r", "r", "s"]})


def test_invalid_utf8_in_parquet_and_hf_strings_quarantines_only_that_row(tmp_path):
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = _arrow_with_bad_utf8()
    pq.write_table(table, tmp_path / "a.parquet")
    expected = [(1, PAIR, None), (2, None, "not valid UTF-8 in field 'prompt'"),
                (3, {"prompt": "q", "response": "s"}, None)]
    rows = list(read_source(str(tmp_path / "a.parquet"))[1])
    assert rows_of(rows) == expected
    assert json.loads(rows[1].raw) == {"prompt": "bad \\xed\\xa0\\x80", "response": "r"}
    Dataset(table).save_to_disk(str(tmp_path / "ds"))
    assert rows_of(read_source(str(tmp_path / "ds"))[1]) == expected


def test_whole_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"^no such file or folder: .*missing\.jsonl$"):
        read_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match=r"empty\.jsonl is empty$"):
        read_source(str(tmp_path / "empty.jsonl"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(InputError, match=r"^unknown format for .*data\.xlsx: use one of \.csv, "
                                         r"\.json, \.jsonl, \.ndjson, \.parquet, \.pq, \.tsv"):
        list(read_source(str(tmp_path / "data.xlsx"))[1])


# -- rows to samples ------------------------------------------------------------------------

def test_sample_from_row_maps_each_schema_to_one_pinned_sample():
    from curator.ingestion.readers import sample_from_row
    from curator.ingestion.schemas import FieldMap

    hello = "184a355aee0241e4024b8ad255384f6c"  # Hi -> Hello (tests/test_records.py)
    chat = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello", "name": "bot"}],
            "source": "web", "score": 0.5}
    s = sample_from_row(chat)
    assert s.sample_id == hello
    assert s.messages == ({"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"})
    assert (s.prompt, s.response) == ("Hi", "Hello")
    assert s.metadata == {"source": "web", "score": 0.5}     # what the mapping did not use
    # the same conversation as a prompt/response pair, a reader's row, or named fields
    assert sample_from_row({"prompt": "Hi", "response": "Hello", "id": 7}).sample_id == hello
    row = RawRow("a.jsonl", 3, {"question": "Hi", "answer": "Hello"}, "{...}")
    assert sample_from_row(row).sample_id == hello
    named = sample_from_row({"q": "Hi", "a": "Hello", "lang": "en"},
                            FieldMap(prompt="q", response="a"))
    assert (named.sample_id, named.metadata) == (hello, {"lang": "en"})
    # several turns: the prompt is every turn before the last answer
    multi = sample_from_row({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"}]})
    assert multi.prompt == "system: Be brief.\n\nuser: 2+2?" and multi.response == "4"
    # a system prompt kept outside the schema (alpaca exports), metadata given outright
    alpaca = sample_from_row({"instruction": "Hi", "input": "", "output": "Hello",
                              "system": "Be kind."}, system="Be kind.",
                             metadata={"origin": "export"})
    assert alpaca.messages[0] == {"role": "system", "content": "Be kind."}
    assert alpaca.sample_id != hello and alpaca.metadata == {"origin": "export"}


def test_sample_from_row_gives_the_quarantine_reason_of_a_bad_row():
    from curator.ingestion.readers import sample_from_row
    from curator.ingestion.schemas import RowError

    bad = [
        (RawRow("a.jsonl", 2, None, "{oops", error="invalid JSON: Expecting value"),
         "invalid JSON: Expecting value"),
        ({"prompt": "Hi"}, "missing field 'response'"),
        ({"prompt": "Hi", "response": "  "}, "field 'response' is empty"),
        ({"messages": [{"role": "user", "content": "Hi"}]},
         "'messages' does not end with an assistant turn"),
        ({"text": "Hi"}, "no known schema (fields: text); use --prompt-field and "
                         "--response-field"),
    ]
    for row, reason in bad:
        with pytest.raises(RowError) as err:
            sample_from_row(row)
        assert str(err.value) == reason
