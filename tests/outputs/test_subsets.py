"""Exports: every format reads back with `datasets`, the manifest's checksums hold, an
existing folder is replaced only with force, tampering is caught, masks and layer subsets
travel with the subset, and load_export gives back the same samples in order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from curator.digests import sha256_file
from curator.ingestion.ingest import ingest
from curator.outputs.subsets import (
    FORMATS,
    ExportError,
    export_selection,
    load_export,
    manifest_digest,
    verify_export,
)
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import SelectionRecord, save_mask_record, save_selection
from tests.helpers import write_jsonl

ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "4", "topic": "math"},
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"prompt": "Say hi in French.", "response": "Bonjour — salut!"},
    {"messages": [{"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Another one?"},
                  {"role": "assistant", "content": "Green."}]},
    {"prompt": "Reverse abc.", "response": "cba"},
    {"prompt": "Count to three.", "response": "1, 2, 3"},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The six rows ingested once; tests use copies."""
    root = tmp_path_factory.mktemp("export-base")
    ingest(Store(root / "store", lock_timeout=10), write_jsonl(root / "d.jsonl", ROWS), "d")
    return root / "store"


@pytest.fixture
def store(base, tmp_path):
    shutil.copytree(base, tmp_path / "store")
    return Store(tmp_path / "store", lock_timeout=10)


@pytest.fixture
def selection(store):
    """A selection of 4 of the 6 samples, in a non-trivial order."""
    pool = load_samples(store, "d", 1)
    picked = [pool[i].sample_id for i in (3, 1, 0, 5)]
    sid = save_selection(store, SelectionRecord("d", 1, "instruction", "random", "4", 6, 4),
                         picked, gains=[0.0] * 4)
    return sid, picked


def with_mask(store, sid):
    """A hand-made mask file in the artifacts, recorded against the selection."""
    from curator.outputs.mask_files import save_mask

    mask = {"layer.weight": torch.tensor([[True, False], [False, True]])}
    path = save_mask(mask, store.artifacts / "masks" / f"{sid}.safetensors")
    save_mask_record(store, sid, "model-fp", f"masks/{sid}.safetensors", sha256_file(path),
                     0.5, 4, 2, {"scope_density": 0.5})
    return mask


def read_back(path: Path, fmt: str, cache: Path) -> list[dict]:
    from datasets import load_dataset, load_from_disk

    if fmt == "hf":
        return list(load_from_disk(str(path / "hf")))
    if fmt == "parquet":
        ds = load_dataset("parquet", data_files=str(path / "data.parquet"), split="train",
                          cache_dir=str(cache))
    else:
        ds = load_dataset("json", data_files=str(path / "data.jsonl"), split="train",
                          cache_dir=str(cache))
    return list(ds)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(store, selection, tmp_path, fmt):
    sid, picked = selection
    by_id = {s.sample_id: s for s in load_samples(store, "d", 1)}
    samples = [by_id[i] for i in picked]
    result = export_selection(store, sid, tmp_path / "out", fmt)
    assert result.n_rows == 4 and result.path == (tmp_path / "out").resolve()
    rows = read_back(result.path, fmt, tmp_path / "hf-cache")
    assert len(rows) == 4
    if fmt in ("jsonl", "parquet", "hf"):
        assert [r["sample_id"] for r in rows] == picked
        assert [r["messages"] for r in rows] == [list(s.messages) for s in samples]
        assert [r["response"] for r in rows] == [s.response for s in samples]
    if fmt == "messages":
        assert rows == [{"messages": list(s.messages)} for s in samples]
    if fmt == "alpaca":
        assert [r["output"] for r in rows] == [s.response for s in samples]
        assert [r["input"] for r in rows] == [""] * 4
        # the system prompt has its own field and is not repeated in the instruction
        assert rows[1]["system"] == "Answer briefly."
        assert rows[1]["instruction"] == "Capital of France?"
        assert [r["instruction"] for r in rows[2:]] == [s.prompt for s in samples[2:]]
        assert rows[0]["instruction"] == samples[0].prompt    # multi-turn: flattened
    if fmt == "sharegpt":
        assert rows[1]["conversations"] == [
            {"from": "system", "value": "Answer briefly."},
            {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."}]
    if fmt == "jsonl":
        assert rows[2]["metadata"] == {"topic": "math"}
    if fmt in ("parquet", "hf"):
        assert json.loads(rows[2]["metadata"]) == {"topic": "math"}

    check_llamafactory_entry(result.path, fmt, sid, rows)

    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["sample_ids"] == picked and manifest["n_rows"] == 4
    assert manifest["format"] == fmt and manifest["selection"]["selection_id"] == sid
    assert manifest["files"] == result.files
    for rel, digest in manifest["files"].items():
        assert sha256_file(result.path / rel) == digest
    assert verify_export(result.path) == []
    assert manifest["mask"] is None and manifest["layers"] is None

    loaded = load_export(result.path)
    if fmt == "alpaca":
        # alpaca has one instruction and one output: single-turn samples (with or without
        # a system prompt) come back as they were; the multi-turn one is flattened
        assert [s.sample_id for s in loaded.samples][1:] == picked[1:]
        assert loaded.samples[0].prompt == samples[0].prompt
        assert [s.response for s in loaded.samples] == [s.response for s in samples]
    else:
        assert [s.sample_id for s in loaded.samples] == picked
    assert loaded.mask is None and loaded.layers is None
    assert loaded.manifest == manifest


# LLaMA-Factory's dataset descriptions, as its data/README.md writes them for the OpenAI
# ("messages"), sharegpt and alpaca formats.
LLAMAFACTORY_OPENAI = {"formatting": "sharegpt", "columns": {"messages": "messages"},
                       "tags": {"role_tag": "role", "content_tag": "content",
                                "user_tag": "user", "assistant_tag": "assistant",
                                "system_tag": "system"}}
LLAMAFACTORY_SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
LLAMAFACTORY_ALPACA = {"columns": {"prompt": "instruction", "query": "input",
                                   "response": "output", "system": "system"}}


def check_llamafactory_entry(path: Path, fmt: str, sid: str, rows: list[dict]) -> None:
    """dataset_info.json names the data file, and every column and role it declares is in
    the rows (sharegpt's role defaults: human, gpt, system)."""
    if fmt == "hf":
        assert not (path / "dataset_info.json").exists()
        return
    info = json.loads((path / "dataset_info.json").read_text())
    entry = info[f"curator_{sid}"]
    assert list(info) == [f"curator_{sid}"]
    assert entry.pop("file_name") == ("data.parquet" if fmt == "parquet" else "data.jsonl")
    assert entry == {"alpaca": LLAMAFACTORY_ALPACA, "sharegpt": LLAMAFACTORY_SHAREGPT}.get(
        fmt, LLAMAFACTORY_OPENAI)
    for row in rows:
        present = [c for c in entry["columns"].values() if c in row]
        assert present == [c for c in entry["columns"].values()
                           if c != "system" or "system" in row]
    if entry.get("formatting") == "sharegpt":
        col = entry["columns"]["messages"]
        tags = entry.get("tags", {"role_tag": "from", "content_tag": "value",
                                  "user_tag": "human", "assistant_tag": "gpt",
                                  "system_tag": "system"})
        roles = {tags["user_tag"], tags["assistant_tag"], tags["system_tag"]}
        for row in rows:
            for m in row[col]:
                assert m[tags["role_tag"]] in roles and isinstance(m[tags["content_tag"]], str)


def test_existing_folder_is_not_overwritten_without_force(store, selection, tmp_path):
    sid, picked = selection
    out = tmp_path / "out"
    export_selection(store, sid, out)
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_selection(store, sid, out)

    result = export_selection(store, sid, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "dataset_info.json",
                                                     "manifest.json"]
    assert [s.sample_id for s in load_export(result.path).samples] == picked
    # no temporary or old folders are left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # a previous export in another format is replaced too, .DS_Store and all
    (out / ".DS_Store").write_text("finder")
    export_selection(store, sid, out, fmt="parquet", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet", "dataset_info.json",
                                                     "manifest.json"]


def test_force_refuses_a_folder_that_is_not_a_curator_export(store, selection, tmp_path, file_tree):
    """--force used to delete whatever --out named; now it replaces only an export."""
    sid, _ = selection
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ExportError) as info:
        export_selection(store, sid, out, force=True)
    assert str(info.value) == (f"{out} is not a curator export (no manifest.json); --force "
                               "replaces only a previous curator export")
    assert file_tree(out) == {"keep.txt": b"precious"}
    (out / "manifest.json").write_text('{"name": "my own manifest"}')
    with pytest.raises(ExportError, match=r"has a manifest.json that curator did not write; "):
        export_selection(store, sid, out, force=True)
    assert sorted(file_tree(out)) == ["keep.txt", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_force_refuses_an_export_holding_the_users_files_or_an_edited_manifest(
        store, selection, tmp_path, file_tree):
    sid, _ = selection
    out = tmp_path / "out"
    export_selection(store, sid, out)
    (out / "notes").mkdir()
    (out / "notes" / "todo.md").write_text("mine")
    before = file_tree(out)
    with pytest.raises(ExportError) as info:
        export_selection(store, sid, out, force=True)
    assert str(info.value) == (f"{out} holds files curator did not write (notes/todo.md); "
                               "--force replaces only a previous curator export")
    assert file_tree(out) == before
    shutil.rmtree(out / "notes")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["n_rows"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="has a manifest.json that was edited after curator wrote it"):
        export_selection(store, sid, out, force=True)


def test_force_never_touches_the_store_its_parents_the_cwd_or_a_links_target(
        store, selection, tmp_path, monkeypatch, file_tree):
    sid, _ = selection
    home = store.path.resolve()
    for out, word in ((store.path, "is"), (tmp_path, "holds"), (tmp_path.parent, "holds")):
        with pytest.raises(ExportError) as info:
            export_selection(store, sid, out, force=True)
        assert str(info.value) == (f"{Path(out).resolve()} {word} the store {home}; "
                                   "choose another folder for the export")
    assert store.query("SELECT count(*) FROM selections") == [(1,)]  # the store is intact

    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(ExportError, match=r"is not a curator export \(no manifest.json\)"):
        export_selection(store, sid, ".", force=True)
    assert file_tree(work) == {"data.csv": b"mine"}

    export_selection(store, sid, tmp_path / "real")
    target = file_tree(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ExportError) as info:
        export_selection(store, sid, tmp_path / "link", force=True)
    assert str(info.value) == (f"{tmp_path / 'link'} is a symbolic link; name a folder, not a "
                               "link (curator does not write or delete through links)")
    assert file_tree(tmp_path / "real") == target and (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o002, 0o775)])
def test_export_folders_follow_the_umask(store, selection, tmp_path, umask, mode):
    """mkdtemp made every export 0700, unreadable to a training job of another user."""
    import os
    import stat

    sid, _ = selection
    old = os.umask(umask)
    try:
        result = export_selection(store, sid, tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.path.stat().st_mode) == mode
    assert stat.S_IMODE((result.path / "data.jsonl").stat().st_mode) == mode & 0o666


def test_a_file_where_the_folder_should_be_is_refused(store, selection, tmp_path):
    sid, _ = selection
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ExportError, match="is not a folder"):
        export_selection(store, sid, tmp_path / "out", force=True)
    assert (tmp_path / "out").read_text() == "a file"


def test_tampering_is_reported_and_refused(store, selection, tmp_path):
    sid, _ = selection
    result = export_selection(store, sid, tmp_path / "out", "jsonl")
    data = result.path / "data.jsonl"
    data.write_text(data.read_text().replace("Paris.", "Rome."))
    assert verify_export(result.path) == ["checksum mismatch data.jsonl"]
    with pytest.raises(ExportError, match="does not match its manifest: checksum mismatch"):
        load_export(result.path)
    assert len(load_export(result.path, verify=False).samples) == 4
    data.unlink()
    assert verify_export(result.path) == ["missing data.jsonl"]


def test_an_edited_manifest_and_unlisted_files_are_reported(store, selection, tmp_path):
    sid, _ = selection
    result = export_selection(store, sid, tmp_path / "out", "jsonl")
    manifest_path = result.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    (result.path / ".DS_Store").write_text("finder")  # hidden files are not the export's
    assert verify_export(result.path) == []
    (result.path / "extra.jsonl").write_text("{}\n")
    assert verify_export(result.path) == ["unexpected file extra.jsonl (not in the manifest)"]
    (result.path / "extra.jsonl").unlink()
    manifest["sample_ids"] = manifest["sample_ids"][:1]  # claims another subset
    manifest_path.write_text(json.dumps(manifest))
    assert verify_export(result.path) == [
        "manifest.json was edited after export (its digest does not match)"]
    with pytest.raises(ExportError, match="was edited after export"):
        load_export(result.path)
    manifest_path.write_text("{not json")
    assert verify_export(result.path)[0].startswith("manifest.json is not readable JSON")
    manifest_path.unlink()
    assert verify_export(result.path) == ["missing manifest.json"]


def test_not_an_export(tmp_path):
    with pytest.raises(ExportError, match="not a curator export"):
        load_export(tmp_path)


def test_unknown_format(store, selection, tmp_path):
    sid, _ = selection
    with pytest.raises(ExportError, match="unknown format 'csv'"):
        export_selection(store, sid, tmp_path / "out", "csv")
    assert not (tmp_path / "out").exists()


def test_mask_and_layers_travel_with_the_subset(store, selection, tmp_path):
    sid, picked = selection
    mask = with_mask(store, sid)
    layers = {"model.layers.0": picked[:2], "model.layers.1": picked[1:]}
    other = save_selection(store, SelectionRecord("d", 1, "instruction", "gast", "4", 6, 4),
                           picked, layers=layers)
    result = export_selection(store, sid, tmp_path / "masked")
    assert sorted(result.files) == ["data.jsonl", "dataset_info.json", "mask.safetensors"]
    assert result.manifest["mask"]["file"] == "mask.safetensors"
    assert result.manifest["mask"]["n_kept"] == 2
    assert result.manifest["mask"]["info"] == {"scope_density": 0.5}
    loaded = load_export(result.path)
    assert torch.equal(loaded.mask["layer.weight"], mask["layer.weight"])
    assert verify_export(result.path) == []

    result = export_selection(store, other, tmp_path / "layered", "parquet")
    assert sorted(result.files) == ["data.parquet", "dataset_info.json", "layers.json"]
    assert result.manifest["layers"] == {"model.layers.0": 2, "model.layers.1": 3}
    loaded = load_export(result.path)
    assert loaded.layers == layers and loaded.mask is None
    assert [s.sample_id for s in loaded.samples] == picked


def test_mask_with_a_wrong_checksum_stops_the_export(store, selection, tmp_path):
    sid, _ = selection
    with_mask(store, sid)
    mask_file = store.artifacts / "masks" / f"{sid}.safetensors"
    mask_file.write_bytes(mask_file.read_bytes() + b" ")
    with pytest.raises(ExportError, match="does not match its recorded checksum"):
        export_selection(store, sid, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("fmt", ["messages", "parquet", "hf"])
def test_force_refuses_an_export_whose_data_the_user_edited(store, selection, tmp_path, fmt,
                                                            file_tree):
    """Issue 28: only the manifest's digest and unlisted files were checked, so --force
    replaced an export whose data.jsonl the user had edited by hand."""
    sid, _ = selection
    out = tmp_path / "e8"
    res = export_selection(store, sid, out, fmt=fmt)
    data = sorted(f for f in res.files if f != "dataset_info.json")[0]
    with (out / data).open("ab") as fh:
        fh.write(b"\n")  # one byte the user added
    before = file_tree(out)
    with pytest.raises(ExportError) as info:
        export_selection(store, sid, out, fmt=fmt, force=True)
    assert str(info.value) == (f"{out} holds files changed since curator wrote them ({data}); "
                               "--force replaces only a previous curator export")
    assert file_tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_an_export_nobody_changed_even_without_a_listed_file(
        store, selection, tmp_path):
    sid, _ = selection
    out = tmp_path / "out"
    export_selection(store, sid, out)
    (out / "dataset_info.json").unlink()  # a file gone: nothing of the user's is lost
    (out / ".DS_Store").write_bytes(b"junk")
    assert export_selection(store, sid, out, fmt="alpaca", force=True).path == out
    assert json.loads((out / "manifest.json").read_text())["format"] == "alpaca"


def test_every_name_an_export_writes_is_known_to_the_recovery(store, selection, tmp_path):
    """EXPORT_NAMES lacked dataset_info.json, so a killed `export --force` kept its 14 MB
    temporary folder (and would have kept a `.X.XXXXXXXX.old` folder) for ever."""
    from curator.store.recovery import EXPORT_NAMES

    sid, _ = selection
    with_mask(store, sid)
    for fmt in FORMATS:
        out = tmp_path / f"out-{fmt}"
        export_selection(store, sid, out, fmt=fmt)
        assert {p.name for p in out.iterdir()} <= EXPORT_NAMES, fmt


def test_cd_into_the_export_and_force_it_with_a_relative_store(store, selection, tmp_path,
                                                               monkeypatch):
    """`cd ex && curator export SEL --store ../store --out . --force` wrote the export, then
    failed: the store path was relative to a working folder the swap had removed."""
    from click.testing import CliRunner

    from curator.cli import main

    sid, _ = selection
    export_selection(store, sid, tmp_path / "ex")
    monkeypatch.chdir(tmp_path / "ex")
    r = CliRunner().invoke(main, ["export", sid, "--store", "../store", "--out", ".",
                                  "--force", "--format", "messages"])
    assert r.exit_code == 0, r.output
    assert f"to {tmp_path / 'ex'}" in r.output
    assert json.loads((tmp_path / "ex" / "manifest.json").read_text())["format"] == "messages"
    runs = Store(tmp_path / "store").query(
        "SELECT status FROM runs WHERE kind = 'export' ORDER BY started_at")
    assert runs[-1] == ("done",)
    assert Path.cwd() == tmp_path / "ex"  # the shell's folder is the new export
