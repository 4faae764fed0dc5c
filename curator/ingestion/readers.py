"""Readers: turn input files into raw rows, streamed, with file and line for every row.

A reader never raises on a bad row: it yields a RawRow with ``error`` set, and ingest puts
that row in quarantine. Only a missing file, an unknown format or an unreadable container
(e.g. a corrupt Parquet footer) is an error for the whole input.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.ingestion.schemas import FieldMap, RowError, map_row
from curator.records import Sample

# The split read from a saved or hub Hugging Face data set unless one is named (ingest's,
# read_source's and `curator ingest --split`'s default).
DEFAULT_SPLIT = "train"
SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
}


class InputError(ValueError):
    """The input as a whole cannot be read (message is for the user)."""


@dataclass
class RawRow:
    file: str
    line: int | None            # 1-based line (JSONL, CSV) or row index + 1 (JSON, Parquet, HF)
    data: dict[str, Any] | None
    raw: str                    # what was read, for quarantine
    error: str | None = None


def sample_from_row(row: RawRow | Mapping[str, Any], fields: FieldMap | None = None, *,
                    system: str | None = None,
                    metadata: Mapping[str, Any] | None = None) -> Sample:
    """The one way a raw row becomes a ``Sample`` (ingest, watched folders, the CLI's
    ``--data`` files, reading an export back).

    ``row`` is a reader's ``RawRow`` or its data. Its schema is mapped by
    ``schemas.map_row`` (``fields`` names the fields explicitly); the fields outside the
    mapping become the metadata unless ``metadata`` is given. ``system`` puts a system turn
    first (a format that keeps it in a field of its own, e.g. an alpaca export's "system").
    Raises ``RowError`` with the quarantine reason: the reader's own error for a row it
    could not parse, else why the schema does not fit.
    """
    if isinstance(row, RawRow):
        if row.error is not None:
            raise RowError(row.error)
        row = row.data or {}
    messages, unmapped = map_row(row, fields)
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    try:
        return Sample.from_messages(messages, unmapped if metadata is None else metadata)
    except ValueError as exc:   # no final assistant turn: a reason like map_row's
        raise RowError(str(exc)) from exc


def _shorten(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


_BOM = b"\xef\xbb\xbf"


def _storable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes: a str may hold them
    (json.loads of "\\ud800", surrogateescape), UTF-8 and so the store cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """The reason a decoded row cannot be stored as text, or None: the first lone surrogate
    (a UTF-16 half such as "\\ud800", valid in JSON, not encodable as UTF-8) in any key
    or value, nested lists and objects included."""
    if isinstance(value, str):
        for ch in value:
            if "\ud800" <= ch <= "\udfff":
                field = f" in field {where!r}" if where else ""
                return f"lone surrogate {ch.encode('utf-8', 'backslashreplace').decode()}" \
                       f"{field} (not encodable as UTF-8)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            reason = _lone_surrogate(key, name) if isinstance(key, str) else None
            if reason := reason or _lone_surrogate(item, name):
                return reason
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if reason := _lone_surrogate(item, f"{where}[{i}]"):
                return reason
    return None


def checked(rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """Rows whose decoded data holds a lone surrogate become quarantined rows (the store
    cannot encode them); every row's file name and raw text are made storable."""
    for row in rows:
        reason = row.error or (_lone_surrogate(row.data) if row.data is not None else None)
        if reason is not None and row.error is None:
            row = RawRow(row.file, row.line, None, row.raw, reason)
        yield RawRow(_storable(row.file), row.line, row.data, _storable(row.raw), row.error)


def read_jsonl(path: Path) -> Iterator[RawRow]:
    name = str(path)
    with path.open("rb") as fh:  # bytes: a bad UTF-8 line must not stop the file
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]  # a UTF-8 byte order mark, as some editors write
            stripped = raw.strip()
            if not stripped:
                continue  # blank lines carry nothing
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                shown = stripped.decode("utf-8", errors="backslashreplace")
                yield RawRow(name, lineno, None, _shorten(shown),
                             f"not valid UTF-8 (byte {exc.start})")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(name, lineno, None, _shorten(text), f"malformed JSON: {exc.msg}")
                continue
            if not isinstance(obj, dict):
                yield RawRow(name, lineno, None, _shorten(text),
                             f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield RawRow(name, lineno, obj, _shorten(text))


def read_json(path: Path) -> Iterator[RawRow]:
    name = str(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8-sig"))  # -sig: a leading BOM
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not valid UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        # Many ".json" files are really JSON lines.
        if exc.msg == "Extra data":
            yield from read_jsonl(path)
            return
        raise InputError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if isinstance(obj, dict):
        # {"data": [...]} / {"examples": [...]} / {"train": [...]}: the one list of records.
        # A single record's own lists (chat turns, tags) are not a list of records.
        lists = [v for v in obj.values() if _is_record_list(v)]
        if len(lists) == 1:
            obj = lists[0]
        else:
            obj = [obj]
    if not isinstance(obj, list):
        raise InputError(f"{path}: expected a list of records, got {type(obj).__name__}")
    for i, item in enumerate(obj, start=1):
        text = json.dumps(item, ensure_ascii=False)
        if isinstance(item, dict):
            yield RawRow(name, i, item, _shorten(text))
        else:
            yield RawRow(name, i, None, _shorten(text),
                         f"expected a JSON object, got {type(item).__name__}")


def _is_record_list(value: Any) -> bool:
    """A non-empty list of objects that are not chat turns (role/content, from/value)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, dict) for v in value)
            and not all(("role" in v and "content" in v) or ("from" in v and "value" in v)
                        for v in value))


def read_csv(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
    name = str(path)
    # surrogateescape keeps undecodable bytes visible per row instead of failing the file.
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        start = reader.line_num + 1
        for fields in reader:
            lineno = start
            start = reader.line_num + 1
            raw = delimiter.join(fields)
            if not fields:
                continue  # a blank line carries nothing (as in JSONL)
            if not any(f.strip() for f in fields):
                # A record, only an empty one: counted and quarantined like {"prompt": ""}.
                yield RawRow(name, lineno, None, _shorten(raw), "every field is empty")
                continue
            if any(_has_surrogates(f) for f in fields):
                shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                yield RawRow(name, lineno, None, _shorten(shown), "not valid UTF-8")
                continue
            if len(fields) != len(header):
                yield RawRow(name, lineno, None, _shorten(raw),
                             f"expected {len(header)} fields, got {len(fields)}")
                continue
            yield RawRow(name, lineno, dict(zip(header, fields, strict=True)), _shorten(raw))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_parquet(path: Path, batch_size: int = 10_000) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    name = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError variants
        raise InputError(f"{path} is not a readable Parquet file: {exc}") from exc
    index = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        yield from _arrow_rows(batch, name, index)
        index += batch.num_rows


def _arrow_rows(batch: Any, name: str, start: int) -> Iterator[RawRow]:
    """Rows of an Arrow record batch or table, numbered from ``start`` + 1. Arrow does not
    check that string columns hold valid UTF-8 (other writers may put anything there), and
    one bad value makes ``to_pylist`` of the whole batch fail: then the batch is read row
    by row and only the bad rows are quarantined."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = None
    if rows is not None:
        for i, row in enumerate(rows, start=start + 1):
            yield RawRow(name, i, row, _shorten(json.dumps(row, default=str, ensure_ascii=False)))
        return
    for i in range(batch.num_rows):
        one = batch.slice(i, 1)
        try:
            row = one.to_pylist()[0]
        except UnicodeDecodeError:
            yield _bad_arrow_row(one, name, start + i + 1)
            continue
        yield RawRow(name, start + i + 1, row,
                     _shorten(json.dumps(row, default=str, ensure_ascii=False)))


def _bad_arrow_row(one: Any, name: str, line: int) -> RawRow:
    import pyarrow as pa

    shown: dict[str, Any] = {}
    bad: list[str] = []
    for field, column in zip(one.schema.names, one.columns, strict=True):
        try:
            shown[field] = column.to_pylist()[0]
        except UnicodeDecodeError:
            bad.append(field)
            try:  # the bytes as they are, undecodable ones escaped
                value = column.cast(pa.binary()).to_pylist()[0]
                shown[field] = value.decode("utf-8", "backslashreplace")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, AttributeError):
                shown[field] = "?"
    return RawRow(name, line, None,
                  _shorten(json.dumps(shown, default=str, ensure_ascii=False)),
                  f"not valid UTF-8 in field {', '.join(map(repr, bad))}")


def read_hf_dataset(source: Any, name: str, batch_size: int = 10_000) -> Iterator[RawRow]:
    if hasattr(source, "with_format"):  # a datasets.Dataset: read its Arrow data in batches
        index = 0
        for batch in source.with_format("arrow").iter(batch_size=batch_size):
            yield from _arrow_rows(batch, name, index)
            index += batch.num_rows
        return
    for i, row in enumerate(source, start=1):
        yield RawRow(name, i, dict(row), _shorten(json.dumps(row, default=str,
                                                             ensure_ascii=False)))


def is_saved_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists()
                              or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def read_file(path: Path) -> Iterator[RawRow]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise InputError(f"unknown format for {path}: use one of {known}, a folder of them, "
                         "or a saved Hugging Face dataset")
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "json":
        return read_json(path)
    if kind == "csv":
        return read_csv(path)
    if kind == "tsv":
        return read_csv(path, delimiter="\t")
    return read_parquet(path)


def input_files(path: Path) -> list[Path]:
    """The files an input path stands for (a file, or a folder's known files, sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(f"folder {path} holds no .jsonl, .json, .csv, .tsv or .parquet file")
        return files
    raise InputError(f"no such file or folder: {path}")


HUB_PREFIX = "hub:"


def _lazy(read: Any, path: Path) -> Iterator[RawRow]:
    """``read(path)``'s rows, read when iterated (so its errors come inside the run)."""
    yield from read(path)


def _folder_rows(files: list[Path]) -> Iterator[RawRow]:
    """The rows of a folder's files; an empty or unreadable file becomes one row with the
    reason (quarantined, like a row that is not JSON) and the other files are read."""
    for f in files:
        if f.stat().st_size == 0:
            yield RawRow(str(f), None, None, "", "empty file")
            continue
        try:
            yield from read_file(f)
        except (InputError, OSError) as exc:
            yield RawRow(str(f), None, None, "", f"unreadable file: {exc}")
        except Exception as exc:  # pyarrow and friends raise their own types on corrupt files
            yield RawRow(str(f), None, None, "", f"unreadable file: {f}: {exc}")


def read_source(source: str, split: str = DEFAULT_SPLIT,
                hub: bool = False) -> tuple[list[str], Iterator[RawRow]]:
    """Resolve an input (path, folder, saved HF dataset, or hub name) to its rows.

    A hub data set is read only when asked for: ``hub:NAME`` or ``hub=True``. Any other
    source is a local path, so a mistyped ``data/train`` fails at once with "no such file"
    instead of a slow network lookup of a data set called that."""
    if source.startswith(HUB_PREFIX):
        source, hub = source[len(HUB_PREFIX):], True
    if hub:
        if not source:
            raise InputError("no hub data set name after hub:")
        _check_hub(source)   # before any store work: an unreachable hub fails at once
        return [f"{HUB_PREFIX}{source}"], checked(_read_hub(source, split))
    path = Path(source)
    if is_saved_hf_dataset(path):
        return [str(path)], checked(_read_saved_hf(path, split))
    if path.exists():
        files = input_files(path)
        if path.is_dir():  # one bad file is one quarantined row, as a schedule does
            return [str(f) for f in files], checked(_folder_rows(files))
        if files[0].stat().st_size == 0:
            raise InputError(f"{files[0]} is empty")
        return [str(f) for f in files], checked(_lazy(read_file, files[0]))
    hint = ""
    if source.count("/") == 1 and not source.startswith((".", "/")) and not path.suffix:
        hint = f" (for a Hugging Face hub data set use hub:{source} or --hub)"
    raise InputError(f"no such file or folder: {source}{hint}")


def hub_lookup(name: str) -> None:
    """Ask the hub whether data set ``name`` exists (one request, short timeout, no
    retries); raises when the hub cannot be reached or does not know the name. Tests
    replace this function: they never reach a network."""
    from huggingface_hub import HfApi

    HfApi().dataset_info(name, timeout=10)


def _check_hub(name: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return  # offline mode: load_dataset reads the local cache or fails at once
    try:
        hub_lookup(name)
    except Exception as exc:  # connection, unknown name, gated: one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load {name!r} from the Hugging Face hub: {first}") from exc


def _read_saved_hf(path: Path, split: str) -> Iterator[RawRow]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise InputError(f"{path} has splits {', '.join(ds)}; pick one with --split")
        ds = ds[split]
    yield from read_hf_dataset(ds, str(path))


def _read_hub(name: str, split: str) -> Iterator[RawRow]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, gated: all mean the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load {name!r} from the Hugging Face hub: {first}") from exc
    yield from read_hf_dataset(ds, f"hub:{name}")
