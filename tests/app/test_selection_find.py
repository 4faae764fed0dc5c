"""Finding things inside a selection and reading why it was picked (issue 27): the sample
picker after a switch, search and metadata filters in the query and the URL, sorts only
over columns the selection has, the sample's metadata, why selected in model terms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curator.app.explain import percent
from curator.store import Store, browse_selections, browse_versions
from curator.store.browse_filters import SampleFilter
from curator.store.selection_rows import get_selection, selection_sample_ids

pytestmark = pytest.mark.slow  # the whole app (AppTest) over a demo store: make test-slow

# CURATOR_APP_FILE: run these against another copy of the app (e.g. the code before a fix)
APP_FILE = Path(os.environ.get("CURATOR_APP_FILE") or Path(__file__).resolve().parents[2]
                / "curator" / "app" / "streamlit_app.py")
TIMEOUT = 60


def app(store_path, monkeypatch, params: dict | None = None) -> AppTest:
    monkeypatch.setenv("CURATOR_STORE", str(store_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.switch_page("views/selections.py")
    if params:
        at.query_params.update(params)
    return at.run()


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]


def members(at: AppTest):
    found = [d.value for d in at.dataframe if {"sample_id", "response"} <= set(d.value.columns)]
    assert found, "no members table"
    return found[0]


def test_sample_picker_follows_the_selection(demo_store_path, monkeypatch):
    """After a switch the picker holds the new selection's first row, not the sample picked
    in the previous one (even one that is on both first pages)."""
    store = Store(demo_store_path)
    first = selection_sample_ids(store, "sel-0001")[:50]
    second = selection_sample_ids(store, "sel-0002")[:50]
    for stale in (next(i for i in first if i in second[1:]),
                  next(i for i in first if i not in second)):
        at = app(demo_store_path, monkeypatch)
        at.selectbox(key="sel_id").set_value("sel-0001").run()
        at.selectbox(key="sel_member_pick").set_value(stale).run()
        at.selectbox(key="sel_id").set_value("sel-0002").run()
        clean(at)
        assert at.selectbox(key="sel_member_pick").value == second[0]
        at.button(key="sel_open_sample").click().run()
        clean(at)
        assert at.text_input(key="sel_sample_id").value == second[0]


def test_search_and_metadata_filters_in_the_query_and_the_url(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = get_selection(store, "sel-0001")
    families = [v for v, _ in browse_versions.metadata_counts(store, sel.dataset, sel.version,
                                                              "family")]
    a, b = families[0], families[1]
    want = store.query(
        "SELECT m.rank FROM selection_members m JOIN version_members v ON v.sample_id = "
        "m.sample_id AND v.dataset = ? AND v.version = ? WHERE m.selection_id = ? AND "
        "m.layer = '' AND json_extract_string(v.metadata, '$.family') IN (?, ?) "
        "ORDER BY m.rank", [sel.dataset, sel.version, sel.selection_id, a, b])
    at = app(demo_store_path, monkeypatch)
    at.selectbox(key="sel_id").set_value("sel-0001").run()
    at.multiselect(key="sel_where").set_value([f"family={a}", f"family={b}"]).run()
    clean(at)
    shown = members(at)
    assert shown["pick"].tolist() == [r + 1 for (r,) in want][:50]  # one field: any value
    assert f"**{len(want):,}** of {sel.n_selected:,} members match" in [
        m.value for m in at.markdown]
    assert list(at.query_params["where"]) == [f"family={a}", f"family={b}"]
    # a word of the first match's prompt narrows it further, in the database
    word = max(store.query("SELECT prompt FROM samples WHERE sample_id = ?",
                           [shown["sample_id"].iloc[0]])[0][0].split(), key=len)
    at.text_input(key="sel_search").set_value(word).run()
    rows, total = browse_selections.member_search(store, "sel-0001", 50, 0, search=word,
                                                  where=(("family", a), ("family", b)))
    assert 1 <= total <= len(want)
    assert members(at)["sample_id"].tolist() == [r["sample_id"] for r in rows]
    assert at.query_params["search"] == word
    # the link brings the same rows back (a reload, a shared link)
    again = app(demo_store_path, monkeypatch, {
        "selection": "sel-0001", "view": "Members", "search": word,
        "where": [f"family={a}", f"family={b}"]})
    clean(again)
    assert members(again)["sample_id"].tolist() == [r["sample_id"] for r in rows]


def test_page_number_in_the_url(demo_store_path, monkeypatch):
    at = app(demo_store_path, monkeypatch, {"selection": "sel-0001", "view": "Members",
                                            "page": "2"})
    clean(at)
    assert members(at)["pick"].iloc[0] == 51
    at.number_input(key="sel_members_page").set_value(1).run()
    assert "page" not in at.query_params
    at.number_input(key="sel_members_page").set_value(2).run()
    assert at.query_params["page"] == "2"


def test_filters_on_several_fields_in_the_store(demo_store_path):
    store = Store(demo_store_path)
    sel = get_selection(store, "sel-0001")
    family = browse_versions.metadata_counts(store, sel.dataset, sel.version, "family")[0][0]
    # one field OR-ed, fields AND-ed: a field no sample has leaves nothing
    rows, total = browse_selections.member_search(store, "sel-0001", 500, 0,
                                                  where=(("family", family),))
    assert total and all(r["metadata"]["family"] == family for r in rows)
    assert browse_selections.member_search(store, "sel-0001", 500, 0, where=(
        ("family", family), ("nope", "x")))[1] == 0
    assert browse_selections.member_search(store, "sel-0001", 500, 0, where=(
        ("family", family), ("nope", "(none)")))[1] == total
    # and across a dataset version, as on the Versions page
    _, n_version = browse_versions.sample_page(store, sel.dataset, sel.version,
                                               SampleFilter(where=(("family", family),)))
    assert n_version >= total
    assert browse_versions.sample_page(store, sel.dataset, sel.version, SampleFilter(
        where=(("family", family), ("nope", "x"))))[1] == 0
    # text never reaches the SQL: quotes and wildcards are searched for as they are
    assert browse_selections.member_search(store, "sel-0001", 5, 0, search="%' OR 1=1 --")[1] == 0


def test_score_sort_only_where_the_selection_has_scores(demo_store_path, monkeypatch):
    at = app(demo_store_path, monkeypatch)
    at.selectbox(key="sel_id").set_value("sel-0001").run()
    clean(at)
    assert "score" not in at.selectbox(key="sel_sort").options  # DELIFT stores no scores
    assert "score" not in members(at).columns
    at.selectbox(key="sel_id").set_value("sel-0005").run()  # GAST: scores, no gains
    clean(at)
    assert "score" in at.selectbox(key="sel_sort").options
    assert "marginal gain" not in at.selectbox(key="sel_sort").options


def test_sample_view_shows_its_metadata_and_keys(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sample = selection_sample_ids(store, "sel-0001")[2]
    family = store.query("SELECT json_extract_string(metadata, '$.family') FROM "
                         "version_members WHERE dataset = 'demo' AND version = 1 AND "
                         "sample_id = ?", [sample])[0][0]
    at = app(demo_store_path, monkeypatch, {"selection": "sel-0001", "sample": sample})
    clean(at)
    meta = [d.value for d in at.dataframe if {"field", "value"} <= set(d.value.columns)][0]
    assert dict(zip(meta["field"], meta["value"], strict=True))["family"] == family
    assert at.button(key="sel_prev").proto.shortcut
    assert at.button(key="sel_next").proto.shortcut


def test_why_selected_in_model_terms(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = get_selection(store, "sel-0002")  # task: FLVMI over the targets
    sample = selection_sample_ids(store, "sel-0002")[0]
    targets = {r[0] for r in store.query(
        "SELECT sample_id FROM version_members WHERE dataset = 'demo-target' AND version = 1")}
    pairs = store.query(
        "SELECT target_id, utility, d_target FROM utilities WHERE model = ? AND config = ? "
        "AND example_id = ? AND valid AND utility > 0", [sel.model,
                                                        sel.config["utility_config"], sample])
    helped = [(t, u / d) for t, u, d in pairs if t in targets]
    assert helped
    mean = sum(p for _, p in helped) / len(helped)
    at = app(demo_store_path, monkeypatch, {"selection": "sel-0002", "sample": sample})
    clean(at)
    sentence = next(m.value for m in at.markdown if "Showing this example" in m.value)
    # the distance names the quantity: loss (nll, the default) or error (prob-l2)
    what = "loss" if sel.config.get("distance", "prob-l2") == "nll" else "error"
    assert (f"makes the model's {what} on the answers of {len(helped)} targets drop by "
            f"{percent(mean)} on average") in sentence
    assert f"{percent(max(p for _, p in helped))})" in sentence
    share = browse_selections.member_rank(store, "sel-0002", sample)["gain"] / sel.objective
    assert any(f"{percent(share)} of the selection's objective" in c.value for c in at.caption)
    assert any(e.label == "How is this computed" for e in at.expander)
    assert "d(i) − d(i | j)" in "\n".join(m.value for m in at.markdown)
    assert {m.label: m.value for m in at.metric}["pick"] == "#1"  # the 1st pick is #1


def test_versions_filters_and_page_in_the_url(demo_store_path, monkeypatch):
    """Across a dataset version: several metadata conditions at once and the page number
    come back from a link."""
    store = Store(demo_store_path)
    counts = browse_versions.metadata_counts(store, "demo", 1, "family")
    (a, n_a), (b, n_b) = counts[0], counts[1]
    monkeypatch.setenv("CURATOR_STORE", str(demo_store_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.switch_page("views/versions.py")
    at.query_params.update({"dataset": "demo", "version": "1",
                            "where": [f"family={a}", f"family={b}"]})
    at.run()
    clean(at)
    assert at.multiselect(key="ver_where").value == [f"family={a}", f"family={b}"]
    total = next(int(m.value.split("**")[1].replace(",", "")) for m in at.markdown
                 if m.value.endswith("matching samples"))
    assert total == n_a + n_b
    at.selectbox(key="ver_samples_size").set_value(25).run()
    at.number_input(key="ver_samples_page").set_value(2).run()
    assert at.query_params["page"] == "2"
    assert list(at.query_params["where"]) == [f"family={a}", f"family={b}"]
    again = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    again.switch_page("views/versions.py")
    again.query_params.update(dict(at.query_params))
    again.run()
    clean(again)
    assert again.number_input(key="ver_samples_page").value == 2
    # the sample shown below the table names its metadata in this version
    pick = again.selectbox(key="ver_sample_pick").value
    family = store.query("SELECT json_extract_string(metadata, '$.family') FROM "
                         "version_members WHERE dataset = 'demo' AND version = 1 AND "
                         "sample_id = ?", [pick])[0][0]
    assert family in (a, b)
    assert f"**metadata** family: `{family}`" in [m.value for m in again.markdown]


def test_random_selection_has_no_zero_gain_picks(demo_store, monkeypatch):
    """Random stores a gain of 0 for every pick; its header says zero-gain picks do not
    apply (it said "zero-gain picks 10"), and no gain is offered as a sort."""
    from curator.config import StageSpec
    from curator.stages import select_stage

    store = Store(demo_store)
    out = select_stage(store, "demo", StageSpec(stage="instruction", method="random",
                                                budget="10%", version=1))
    sid = out.selection_id
    assert browse_selections.zero_gain_count(store, sid) == get_selection(store, sid).n_selected
    at = app(demo_store, monkeypatch, {"selection": sid})
    clean(at)
    assert {m.label: m.value for m in at.metric}["zero-gain picks"] == "none apply"
    assert "marginal gain" not in at.selectbox(key="sel_sort").options
    assert "zero_gain" not in members(at).columns
