"""The sample view shows the quality prior: the stored signals, and a warning with the
reason on a row the selection's prior left out."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from curator.app import __file__ as APP_INIT
from curator.config import QualityOptions, ScoringOptions, StageSpec
from curator.ingestion.ingest import ingest
from curator.stages import select_stage
from curator.store import Store
from curator.store.selection_rows import get_selection
from curator.testing import tiny_loaded_model
from tests.helpers import write_jsonl

APP_FILE = APP_INIT.replace("__init__.py", "streamlit_app.py")


@pytest.fixture(scope="module")
def prior_store(tmp_path_factory, pair_rows):
    root = tmp_path_factory.mktemp("quality-view")
    store = Store(root / "store")
    ingest(store, write_jsonl(root / "d.jsonl", pair_rows(12)), "d")
    out = select_stage(store, "d", StageSpec(method="embedding", budget="4",
                                             quality=QualityOptions(drop="25%")),
                       lm=tiny_loaded_model("llama"), options=ScoringOptions(k=3))
    return store, out.selection_id


def open_sample(store, selection_id, sample_id, monkeypatch) -> AppTest:
    monkeypatch.setenv("CURATOR_STORE", str(store.path))
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.switch_page("views/selections.py")
    at.query_params["selection"] = selection_id
    at.query_params["sample"] = sample_id
    return at.run()


def test_a_dropped_row_says_why(prior_store, monkeypatch):
    store, sel_id = prior_store
    dropped = get_selection(store, sel_id).config["quality"]["dropped"]
    sample_id, reason = next(iter(dropped.items()))
    at = open_sample(store, sel_id, sample_id, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert any("Left out of this selection by the quality prior" in w and reason in w
               for w in warnings), warnings
    signals = [d.value for d in at.dataframe if "IFD" in d.value.columns]
    assert len(signals) == 1 and signals[0]["model"].iloc[0] == "tiny-llama-0"


def test_a_kept_row_shows_its_signals(prior_store, monkeypatch):
    store, sel_id = prior_store
    rec = get_selection(store, sel_id)
    kept = store.query("SELECT sample_id FROM selection_members WHERE selection_id = ? "
                       "ORDER BY rank LIMIT 1", [sel_id])[0][0]
    assert kept not in rec.config["quality"]["dropped"]
    at = open_sample(store, sel_id, kept, monkeypatch)
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert any("left out 3 of 12 rows; not this one" in c.value for c in at.caption)
    signals = [d.value for d in at.dataframe if "IFD" in d.value.columns]
    assert float(signals[0]["answer loss"].iloc[0]) > 0
