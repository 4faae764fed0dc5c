"""The sample data: deterministic, the documented shape, and ground truth that matches the rows."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from curator import sample_data
from curator.records import sample_id_for
from curator.sample_data import (
    FILES,
    MALFORMED_BAD_LINES,
    MALFORMED_LINE_COUNT,
    NEW_FAMILY_V2,
    SAMPLE_DATA_DIR,
    TARGET_FAMILY,
    V1_FAMILIES,
    ensure_sample_data,
    generate,
    load_labels,
)


def _pair_id(prompt: str, response: str) -> str:
    return sample_id_for(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _read_pairs(directory: Path, key: str) -> list[tuple[str, str, str]]:
    """(prompt, response, family) per row, mapped the way ingest maps each schema."""
    path = directory / FILES[key]
    if key == "v1":
        return [
            (
                r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""),
                r["output"],
                r["family"],
            )
            for r in _jsonl(path)
        ]
    if key == "v2":
        pairs = []
        for r in _jsonl(path):
            user, assistant = r["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            pairs.append((user["content"], assistant["content"], r["family"]))
        return pairs
    if key == "v3":
        with path.open(encoding="utf-8", newline="") as handle:
            return [(r["prompt"], r["response"], r["family"]) for r in csv.DictReader(handle)]
    if key == "target":
        return [(r["question"], r["answer"], r["family"]) for r in _jsonl(path)]
    return [(r["prompt"], r["response"], r["family"]) for r in _jsonl(path)]


def _ids(directory: Path, key: str) -> list[str]:
    return [_pair_id(p, r) for p, r, _ in _read_pairs(directory, key)]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return ensure_sample_data(SAMPLE_DATA_DIR)


@pytest.fixture(scope="module")
def labels(data_dir: Path) -> dict:
    return load_labels(data_dir)


def test_generation_is_byte_identical_and_matches_committed_files(tmp_path: Path, data_dir: Path):
    first = generate(tmp_path / "a")
    second = generate(tmp_path / "b")
    assert set(first) == set(FILES)
    for key, path in first.items():
        data = path.read_bytes()
        assert data == second[key].read_bytes(), key
        assert data == (data_dir / FILES[key]).read_bytes(), f"{key}: rerun the generator"


def test_another_seed_gives_other_rows(tmp_path: Path):
    assert generate(tmp_path / "a", seed=1)["v1"].read_bytes() != (
        generate(tmp_path / "b", seed=0)["v1"].read_bytes()
    )


def test_committed_files_are_small(data_dir: Path):
    assert sum((data_dir / name).stat().st_size for name in FILES.values()) < 300_000


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("v1", 280, 320),
        ("v2", 140, 160),
        ("v3", 90, 110),
        ("target", 25, 35),
        ("eval", 35, 45),
    ],
)
def test_row_counts(data_dir: Path, key: str, low: int, high: int):
    assert low <= len(_read_pairs(data_dir, key)) <= high


def test_families(data_dir: Path):
    families = {
        key: Counter(f for _, _, f in _read_pairs(data_dir, key))
        for key in ("v1", "v2", "v3", "target", "eval")
    }
    assert set(families["v1"]) == set(V1_FAMILIES)
    assert set(families["v2"]) - set(families["v1"]) == {NEW_FAMILY_V2}
    assert families["v2"][NEW_FAMILY_V2] >= 30
    for version in ("v1", "v2", "v3"):
        assert families[version][TARGET_FAMILY] >= 10, version
    assert set(families["target"]) == set(families["eval"]) == {TARGET_FAMILY}


def test_rows_are_short(data_dir: Path):
    # Roughly 60 tokens: the SmolLM2 tokenizer averages about 4 characters a token on this text.
    for key in ("v1", "v2", "v3", "target", "eval"):
        for prompt, response, _ in _read_pairs(data_dir, key):
            assert 0 < len(prompt) <= 240 and 0 < len(response) <= 240


def test_no_duplicates_within_a_file(data_dir: Path):
    for key in ("v1", "v2", "v3", "target", "eval"):
        ids = _ids(data_dir, key)
        assert len(ids) == len(set(ids)), key


def test_v2_duplicates_hash_to_v1_ids(data_dir: Path, labels: dict):
    v1 = set(_ids(data_dir, "v1"))
    shared = [i for i in _ids(data_dir, "v2") if i in v1]
    assert len(shared) == 10
    assert all(not labels[i]["noisy"] and labels[i]["versions"] == ["v1", "v2"] for i in shared)
    # Half of them are alpaca rows with an input, so the instruction + "\n\n" + input rule matters.
    rows = {_pair_id(p, r): p for p, r, _ in _read_pairs(data_dir, "v2")}
    assert sum("\n\n" in rows[i] for i in shared) == 5


def test_v3_duplicates_hash_to_v2_ids(data_dir: Path, labels: dict):
    v2_only = set(_ids(data_dir, "v2")) - set(_ids(data_dir, "v1"))
    shared = [i for i in _ids(data_dir, "v3") if i in v2_only]
    assert len(shared) == 5
    assert all(labels[i]["versions"] == ["v2", "v3"] for i in shared)
    assert not set(_ids(data_dir, "v3")) & set(_ids(data_dir, "v1"))


def test_labels_cover_exactly_the_stream(data_dir: Path, labels: dict):
    stream = {i for key in ("v1", "v2", "v3") for i in _ids(data_dir, key)}
    assert set(labels) == stream
    for key in ("v1", "v2", "v3"):
        for prompt, response, family in _read_pairs(data_dir, key):
            label = labels[_pair_id(prompt, response)]
            assert label["family"] == family
            assert key in label["versions"]
            assert label["noisy"] == (label["noise_kind"] is not None)


def test_noise_per_version(labels: dict):
    noise = {
        v: Counter(
            lab["noise_kind"] for lab in labels.values() if lab["noisy"] and lab["versions"][0] == v
        )
        for v in ("v1", "v2", "v3")
    }
    assert noise["v1"] == Counter()
    assert noise["v2"] == Counter(swapped_response=8, truncated_response=7)
    assert noise["v3"] == Counter(wrong_answer=4, swapped_response=3, truncated_response=3)


def _check_answer(family: str, prompt: str, response: str) -> bool | None:
    """Whether a response is right, for families that can be checked mechanically (else None)."""
    if family == "arithmetic":
        m = re.fullmatch(r"(\d+) ([-+*/]) \$?(\d+) = \$?(\d+)\. The answer is \$?(\d+)\.", response)
        if not m:
            return False
        a, op, b, result, answer = m.groups()
        value = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}[op](
            int(a), int(b)
        )
        return value == int(result) == int(answer) and a in prompt and b in prompt
    if family == "string_ops":
        word = prompt.split("\n\n")[-1]
        if prompt.startswith("Reverse"):
            return response == word[::-1]
        if prompt.startswith("Write the word below in uppercase"):
            return response == word.upper()
        if prompt.startswith("Sort"):
            return response == "".join(sorted(word))
        if prompt.startswith("How many letters"):
            return response == str(len(word))
        letter = re.search(r"letter '(\w)'", prompt).group(1)
        return response == str(word.count(letter))
    if family == "date_arithmetic":
        m = re.fullmatch(r"What date is (\d+) days (after|before) ([\d-]+)\?", prompt)
        if m:
            days = int(m.group(1)) * (1 if m.group(2) == "after" else -1)
            end = dt.date.fromisoformat(m.group(3)) + dt.timedelta(days=days)
            return response.endswith(f" is {end.isoformat()}.")
        m = re.fullmatch(r"What day of the week was ([\d-]+)\?", prompt)
        if m:
            return response.endswith(dt.date.fromisoformat(m.group(1)).strftime(" %A."))
        start, end = map(dt.date.fromisoformat, re.findall(r"\d{4}-\d\d-\d\d", prompt))
        return response.endswith(f" is {(end - start).days}.")
    return None


def test_clean_rows_are_correct_and_noisy_ones_are_not(data_dir: Path, labels: dict):
    checked = Counter()
    for key in ("v1", "v2", "v3", "target", "eval"):
        for prompt, response, family in _read_pairs(data_dir, key):
            verdict = _check_answer(family, prompt, response)
            if verdict is None:
                continue
            noisy = key in ("v1", "v2", "v3") and labels[_pair_id(prompt, response)]["noisy"]
            assert verdict is not noisy, (key, prompt, response)
            checked[noisy] += 1
    assert checked[False] > 200 and checked[True] >= 8


def test_target_and_eval_rows_are_new(data_dir: Path):
    stream = {i for key in ("v1", "v2", "v3") for i in _ids(data_dir, key)}
    stream_prompts = {p for key in ("v1", "v2", "v3") for p, _, _ in _read_pairs(data_dir, key)}
    target, held_out = _read_pairs(data_dir, "target"), _read_pairs(data_dir, "eval")
    assert not {_pair_id(p, r) for p, r, _ in target + held_out} & stream
    assert not {p for p, _, _ in target + held_out} & stream_prompts
    assert not {p for p, _, _ in target} & {p for p, _, _ in held_out}


def _is_good_row(line: bytes) -> bool:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and all(
        isinstance(record.get(k), str) and record[k] for k in ("prompt", "response")
    )


def test_malformed_file_has_exactly_the_documented_bad_lines(data_dir: Path):
    lines = (data_dir / FILES["malformed"]).read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a newline
    lines = lines[:-1]
    assert len(lines) == MALFORMED_LINE_COUNT
    bad = {number for number, line in enumerate(lines, start=1) if not _is_good_row(line)}
    assert bad == set(MALFORMED_BAD_LINES)
    with pytest.raises(UnicodeDecodeError):
        lines[9].decode("utf-8")
    assert lines[10] == b""


def test_readme_documents_files_and_malformed_lines(data_dir: Path):
    readme = (SAMPLE_DATA_DIR / "README.md").read_text(encoding="utf-8")
    for name in FILES.values():
        assert f"`{name}`" in readme
    documented = {int(n) for n in re.findall(r"^\| (\d+) \| bad", readme, flags=re.M)}
    assert documented == set(MALFORMED_BAD_LINES)
    assert "python -m curator.sample_data --out sample_data" in readme


def test_ensure_sample_data_generates_only_when_missing(tmp_path: Path, monkeypatch):
    out = ensure_sample_data(tmp_path / "data")
    assert all((out / name).is_file() for name in FILES.values())
    calls = []
    monkeypatch.setattr(sample_data, "generate", lambda *a, **k: calls.append(a))
    ensure_sample_data(out)
    assert calls == []
    (out / FILES["labels"]).unlink()
    ensure_sample_data(out)
    assert len(calls) == 1


def test_cli_writes_the_files(tmp_path: Path, capsys):
    assert sample_data.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(tmp_path / name) for name in FILES.values())


def test_readme_family_counts_match_the_files(data_dir: Path):
    readme = (SAMPLE_DATA_DIR / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)`.*\| (\d+) \| (\d+) \| (\d+) \|$", readme, flags=re.M)
    documented = {family: tuple(map(int, counts)) for family, *counts in rows}
    counts = {
        key: Counter(f for _, _, f in _read_pairs(data_dir, key)) for key in ("v1", "v2", "v3")
    }
    actual = {f: tuple(counts[v][f] for v in ("v1", "v2", "v3")) for f in sample_data.FAMILIES}
    assert documented == actual


def test_readme_examples_are_real_rows(data_dir: Path):
    readme = (SAMPLE_DATA_DIR / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)`[^|]*\| ([^|]+) \| ([^|]+) \| \d+ \|", readme, flags=re.M)
    rows = [row for row in rows if row[0] in sample_data.FAMILIES]
    assert len(rows) == len(sample_data.FAMILIES)
    pairs = {(p, r, f) for key in ("v1", "v2") for p, r, f in _read_pairs(data_dir, key)}
    for family, prompt, response in rows:
        assert (prompt.replace("⏎⏎", "\n\n"), response, family) in pairs
