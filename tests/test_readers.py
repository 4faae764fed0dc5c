"""Readers: every format yields rows with file and line; bad rows carry a reason, never raise."""

from __future__ import annotations

import json

import pytest

from curator.readers import (
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


def test_hub_name_is_recognised_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files, rows = read_source("someorg/somedata")  # lazy: nothing is loaded until iterated
    assert files == ["hub:someorg/somedata"]
    rows.close()


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
