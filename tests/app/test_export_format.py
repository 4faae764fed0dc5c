"""The Export page's format box lists the format names alone, so typing "messages" finds
messages (the help text of jsonl mentions messages too, and used to match first)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from curator.app import __file__ as APP_INIT
from curator.config import StageSpec
from curator.ingestion.ingest import ingest
from curator.stages import select_stage
from curator.store import Store
from curator.vocabulary import EXPORT_FORMATS
from tests.helpers import write_jsonl

APP_FILE = APP_INIT.replace("__init__.py", "streamlit_app.py")


def test_format_box_lists_names_and_the_help_follows(tmp_path, pair_rows, monkeypatch):
    store = Store(tmp_path / "store")
    ingest(store, write_jsonl(tmp_path / "d.jsonl", pair_rows(6)), "d")
    select_stage(store, "d", StageSpec(method="random", budget="3"))
    monkeypatch.setenv("CURATOR_STORE", str(store.path))
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.switch_page("views/export.py")
    at.run()
    box = at.selectbox(key="exp_fmt")
    assert list(box.options) == list(EXPORT_FORMATS)
    box.set_value("messages").run()
    assert "OpenAI-style {messages: [...]}" in [c.value for c in at.caption]
