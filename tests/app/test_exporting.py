"""The app's export decides where it may write with the function `curator export` uses
(issue 28): a file, an unwritable folder, the store's own folder and a folder inside an
existing export are refused with the reason in one line, nothing is written, and the page
says so without "the store is busy" and keeps listing the exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curator.app import exporting
from curator.ingestion.ingest import ingest
from curator.outputs.subsets import ExportError, export_selection
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import SelectionRecord, save_selection
from tests.helpers import write_jsonl

APP_FILE = Path(__file__).resolve().parents[2] / "curator" / "app" / "streamlit_app.py"


@pytest.fixture
def store(tmp_path) -> Store:
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(5)]
    store = Store(tmp_path / "store", lock_timeout=10)
    ingest(store, write_jsonl(tmp_path / "d.jsonl", rows), "d")
    ids = [s.sample_id for s in load_samples(store, "d", 1)][:3]
    save_selection(store, SelectionRecord("d", 1, "instruction", "random", "3", 5, 3), ids,
                   gains=[0.0] * 3)
    return store


def _listing(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_refused_destinations_write_nothing_and_say_why(store, tmp_path, monkeypatch):
    home = store.path
    (tmp_path / "a-file").write_text("mine")
    export_selection(store, "sel-0001", tmp_path / "old-export")
    cases = {
        tmp_path / "a-file": f"{tmp_path / 'a-file'} is a file, not a folder",
        home: f"{home / 'sel-0001-jsonl'} is inside the store's own folder {home}; choose "
              f"another folder for the export (or one in {home / 'exports'})",
        tmp_path / "old-export": f"{tmp_path / 'old-export' / 'sel-0001-jsonl'} is inside "
                                 f"{tmp_path / 'old-export'}, which curator wrote (export); "
                                 "choose another folder for the export",
        tmp_path / "old-export" / "deeper": f"{tmp_path / 'old-export' / 'deeper' / 'sel-0001-jsonl'}"
                                            f" is inside {tmp_path / 'old-export'}, which "
                                            "curator wrote (export); choose another folder "
                                            "for the export",
    }
    before = _listing(tmp_path)
    for dest, reason in cases.items():
        with pytest.raises(ExportError) as info:
            exporting.write_export(store, "sel-0001", "jsonl", dest)
        assert str(info.value) == reason
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path / "ro"
                        else real(p, m))
    (tmp_path / "ro").mkdir()
    with pytest.raises(ExportError) as info:
        exporting.write_export(store, "sel-0001", "jsonl", tmp_path / "ro")
    assert str(info.value) == (f"cannot write in {tmp_path / 'ro'} (permission denied); "
                               "choose another folder for the export")
    assert _listing(tmp_path) == sorted([*before, "ro"])
    assert store.query("SELECT count(*) FROM runs WHERE kind = 'export'") == [(1,)]


def test_a_relative_destination_is_shown_absolute(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exporting.destination(" out ") == tmp_path / "out"
    assert exporting.next_export(store, "sel-0001", "jsonl", Path("out")) == \
        tmp_path / "out" / "sel-0001-jsonl"


def test_the_page_refuses_in_one_line_and_keeps_the_list(store, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_STORE", str(store.path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=60)
    at.switch_page("views/export.py")
    at.run()
    at.button(key="exp_write").click().run()   # the default: <store>/exports
    assert not at.exception and not at.warning
    assert (store.path / "exports" / "sel-0001-jsonl" / "manifest.json").is_file()
    (tmp_path / "a-file").write_text("mine")
    before = _listing(tmp_path)
    for dest in (tmp_path / "a-file", store.path, store.path / "exports" / "sel-0001-jsonl"):
        at.text_input(key="exp_dest").input(str(dest)).run()
        assert not at.exception and not at.warning, [w.value for w in at.warning]
        assert len(at.error) == 1 and "\n" not in at.error[0].value
        assert at.error[0].value.startswith("Cannot export here: ")
        assert at.button(key="exp_write").disabled
        assert _listing(tmp_path) == before
    at.text_input(key="exp_dest").input(str(store.path)).run()
    # the store's folder is refused, and its exports are still listed below
    assert at.dataframe[0].value["folder"].tolist() == ["exports/sel-0001-jsonl"]
