"""Every page of the app on the demo fixture store, driven through AppTest by widget key.

Numbers on screen are checked against the library (or plain SQL here in the test), so a
page that renders but shows the wrong count fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from curator.outputs.mask_files import mask_heatmap
from curator.pipeline import exports
from curator.store import Store, browse_scores, browse_selections, browse_versions
from curator.store.datasets import (
    diff_versions,
    list_datasets,
    list_versions,
    load_samples,
    version_sample_ids,
)
from curator.store.selection_rows import (
    get_mask_record,
    get_selection,
    list_selections,
    selection_layers,
    selection_pool_ids,
    selection_sample_ids,
)

pytestmark = pytest.mark.slow  # the whole app (AppTest) over a demo store: make test-slow

# CURATOR_APP_FILE: run these against another copy of the app (e.g. the code before a fix)
APP_FILE = Path(os.environ.get("CURATOR_APP_FILE") or Path(__file__).resolve().parents[2]
                / "curator" / "app" / "streamlit_app.py")
TIMEOUT = 60


def make_app(store_path, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("CURATOR_STORE", str(store_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    if page:
        at.switch_page(f"views/{page}.py")
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def table(at: AppTest, *columns: str, nth: int = 0):
    """The ``nth`` dataframe on the page that has all of ``columns`` (AppTest knows the
    keys of selectable dataframes only, so tables are found by what they hold)."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert len(found) > nth, f"no table with {columns}"
    return found[nth]


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def matching_count(at: AppTest) -> int:
    for m in at.markdown:
        if m.value.endswith("matching samples"):
            return int(m.value.split("**")[1].replace(",", ""))
    raise AssertionError("no match count on the page")


# -- overview -----------------------------------------------------------------------------

def test_overview_counts(demo_store_path, monkeypatch):
    at = make_app(demo_store_path, monkeypatch)
    assert_clean(at)
    store = Store(demo_store_path)
    m = metrics(at)
    assert m["datasets"] == str(len(list_datasets(store)))
    assert m["selections"] == str(len(list_selections(store)))
    assert m["versions"] == "5"
    assert m["masks"] == "1"
    versions = list_versions(store, "demo")
    demo = table(at, "added", "duplicates")
    assert list(demo["members"]) == [v.n_members for v in versions]
    assert list(demo["added"]) == [v.n_added for v in versions]
    runs = table(at, "status", "run_id")
    assert set(runs["status"]) <= {"done", "failed", "running"} and len(runs) > 0


def test_recent_runs_say_how_far_each_got(demo_store_path, monkeypatch):
    """No raw None and no "done 0" for a finished run that counts no steps: its progress
    says what it did (rows exported, pairs scored, rows accepted)."""
    at = make_app(demo_store_path, monkeypatch)
    runs = table(at, "status", "run_id", "progress")
    assert "done" not in runs and "total" not in runs
    store = Store(demo_store_path)
    export_run = runs[runs["kind"] == "export"].iloc[0]
    n_rows = json.loads(store.query("SELECT result FROM runs WHERE run_id = ?",
                                    [export_run["run_id"]])[0][0])["n_rows"]
    assert export_run["progress"] == f"{n_rows:,} rows"
    scored = runs[runs["kind"] == "score-utility"].iloc[0]
    done, total = store.query("SELECT done, total FROM runs WHERE run_id = ?",
                              [scored["run_id"]])[0]
    assert scored["progress"] == f"{done:,} of {total:,}"
    finished = runs[runs["status"] == "done"]
    assert not finished["progress"].isin(["", "0", None]).any()
    assert not runs.astype(str).isin(["None"]).any().any()


@pytest.mark.parametrize("page", ["overview", "versions", "selections", "masks", "export"])
def test_missing_store_shows_how_to_create(tmp_path, monkeypatch, page):
    at = make_app(tmp_path / "nowhere", monkeypatch, page)
    assert not at.exception
    assert any("curator init" in i.value for i in at.info)
    assert not (tmp_path / "nowhere").exists()  # looking never creates a store


def test_empty_store_shows_how_to_create(tmp_path, monkeypatch):
    Store(tmp_path / "empty").init()
    at = make_app(tmp_path / "empty", monkeypatch, "versions")
    assert not at.exception
    assert any("curator ingest" in i.value for i in at.info)


# -- versions -----------------------------------------------------------------------------

def test_versions_samples_search_filter_and_pages(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "versions")
    assert_clean(at)
    at.selectbox(key="ver_dataset").set_value("demo")
    at.selectbox(key="ver_version").set_value(1).run()
    assert_clean(at)
    samples = load_samples(store, "demo", 1)
    assert metrics(at)["samples"] == str(len(samples))
    # the default filter is "family: (any)", so everything matches
    assert matching_count(at) == len(samples)

    at.text_input(key="ver_search").input("capital").run()
    assert_clean(at)
    assert matching_count(at) == len(load_samples(store, "demo", 1, search="capital")) > 0

    at.text_input(key="ver_search").input("").run()
    family = samples[0].metadata["family"]
    at.selectbox(key="ver_meta_value").set_value(family).run()
    assert_clean(at)
    expected = sum(s.metadata.get("family") == family for s in samples)
    assert matching_count(at) == expected > 0
    shown = table(at, "prompt", "chars", "response")
    assert set(shown["family"]) == {family}

    at.selectbox(key="ver_meta_value").set_value("(any)").run()
    lo, hi = at.slider(key="ver_length").value
    cut = lo + (hi - lo) // 4
    at.slider(key="ver_length").set_value((lo, cut)).run()
    assert_clean(at)
    n_short = store.query(
        "SELECT count(*) FROM version_members m JOIN samples s USING (sample_id) "
        "WHERE m.dataset = 'demo' AND m.version = 1 AND s.n_chars <= ?", [cut])[0][0]
    assert matching_count(at) == n_short > 0

    at.slider(key="ver_length").set_value((lo, hi))
    at.selectbox(key="ver_samples_size").set_value(25)
    at.number_input(key="ver_samples_page").set_value(2).run()
    assert_clean(at)
    page = table(at, "prompt", "chars", "response")
    assert len(page) == 25
    assert page["sample_id"].iloc[0] == samples[25].sample_id
    # the sample picker shows the chosen sample's full text
    at.selectbox(key="ver_sample_pick").set_value(samples[30].sample_id).run()
    assert samples[30].response in [t.value for t in at.text]


def test_versions_score_filter(demo_store_path, monkeypatch):
    at = make_app(demo_store_path, monkeypatch, "versions")
    at.selectbox(key="ver_version").set_value(1).run()
    options = at.selectbox(key="ver_score").options
    losses = [o for o in options if o.startswith("loss")]
    assert losses, options
    at.selectbox(key="ver_score").set_value(losses[0]).run()
    assert_clean(at)
    store = Store(demo_store_path)
    config = next(x.config for x in browse_versions.score_sources(store, "demo", 1)
                           if x.kind == "loss")
    median = store.query("SELECT median(distance) FROM losses WHERE config = ?", [config])[0][0]
    at.number_input(key="ver_score_min").set_value(median).run()
    assert_clean(at)
    shown = table(at, "prompt", "chars", "response")
    assert (shown["score"] >= median).all()
    n = store.query(
        "SELECT count(*) FROM version_members m JOIN losses l USING (sample_id) WHERE "
        "m.dataset = 'demo' AND m.version = 1 AND l.distance >= ? AND l.config = ?",
        [median, config])[0][0]
    assert 0 < matching_count(at) == n < 300


def test_versions_trash_and_restore(demo_store, monkeypatch):
    from curator.store.trash import trash_page, trashed_ids

    store = Store(demo_store)
    at = make_app(demo_store, monkeypatch, "versions")
    at.selectbox(key="ver_dataset").set_value("demo")
    at.selectbox(key="ver_version").set_value(1).run()
    pick = at.selectbox(key="ver_sample_pick").value
    at.text_input(key="ver_trash_reason").input("wrong answer").run()
    at.button(key="ver_trash").click().run()
    assert_clean(at)
    assert trashed_ids(store, "demo") == {pick}
    assert trash_page(store, "demo")[0]["reason"] == "wrong answer"
    assert any("is in the trash" in s.value for s in at.success)
    assert table(at, "sample_id", "trashed")["trashed"].sum() == 1
    assert at.button(key="ver_restore")  # the trashed sample offers a restore instead
    at.radio(key="ver_view").set_value("Trash").run()
    assert_clean(at)
    assert table(at, "sample_id", "reason")["sample_id"].tolist() == [pick]
    at.button(key="trash_restore").click().run()
    assert_clean(at)
    assert trashed_ids(store, "demo") == set()
    assert any("restored 1 sample(s) of demo" in s.value for s in at.success)
    assert any("is empty" in i.value for i in at.info)


def test_versions_diff(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "versions")
    at.selectbox(key="ver_dataset").set_value("demo")
    at.radio(key="ver_view").set_value("Diff").run()
    assert_clean(at)
    at.selectbox(key="diff_new").set_value(2).run()
    at.selectbox(key="diff_old").set_value(1).run()
    assert_clean(at)
    diff = diff_versions(store, "demo", 1, 2)
    m = metrics(at)
    assert m["added"] == f"{diff.n_added:,}"
    assert m["removed"] == f"{diff.n_removed:,}"
    assert m["unchanged"] == f"{diff.n_unchanged:,}"
    added = table(at, "sample_id", "chars")
    assert len(added) == min(50, diff.n_added)
    assert added["sample_id"].iloc[0] == diff.added[0]


def test_versions_quarantine(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "versions")
    at.selectbox(key="ver_dataset").set_value("demo-malformed").run()
    at.radio(key="ver_view").set_value("Quarantine").run()
    assert_clean(at)
    n = store.query("SELECT count(*) FROM quarantine WHERE dataset = 'demo-malformed'")[0][0]
    assert n > 0
    assert f"**{n:,}** quarantined rows" in markdown_text(at)
    reasons = table(at, "reason", "rows")
    assert reasons["rows"].sum() == n
    assert len(table(at, "raw")) == n


# -- selections ---------------------------------------------------------------------------

def test_selections_members_in_pick_order(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "selections")
    assert_clean(at)
    for sel in list_selections(store):
        at.selectbox(key="sel_id").set_value(sel.selection_id).run()
        assert_clean(at)
        m = metrics(at)
        assert m["selected"] == f"{sel.n_selected:,} of {sel.n_pool:,}"
        assert f"**{sel.stage}** stage · method **{sel.method}**" in markdown_text(at)
        members = table(at, "pick", "response")
        ids = selection_sample_ids(store, sel.selection_id)
        assert list(members["sample_id"]) == ids[:50]
        assert list(members["pick"]) == list(range(1, min(50, len(ids)) + 1))  # #1 first
    sel = list_selections(store)[0]
    # show the selection first: the page input's range is the shown selection's (the last
    # one of the loop, whose 30 GAST members fit on one page)
    at.selectbox(key="sel_id").set_value(sel.selection_id).run()
    at.number_input(key="sel_members_page").set_value(2).run()
    members = table(at, "pick", "response")
    assert members["pick"].iloc[0] == 51
    gains = members["gain"].tolist()
    assert all(a >= b - 1e-9 for a, b in zip(gains, gains[1:], strict=False))  # lazy greedy


@pytest.mark.parametrize("sel_index", [0, 2, 4])
def test_selections_scores_selected_against_not(demo_store_path, monkeypatch, sel_index):
    store = Store(demo_store_path)
    sel = list_selections(store)[sel_index]
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id)
    at.radio(key="sel_view").set_value("Scores").run()
    assert_clean(at)
    # lengths exist for every pool sample: the reconstructed pool has the stored size
    assert metrics(at)["samples with a value"] == f"{sel.n_pool:,}"
    for name in at.selectbox(key="sel_score").options:
        at.selectbox(key="sel_score").set_value(name).run()
        assert_clean(at)
    if sel.method == "gast":
        assert "gradient score" in at.selectbox(key="sel_score").options
    else:
        assert "loss d(i)" in at.selectbox(key="sel_score").options


def test_selections_scores_range_lists_the_samples_in_it(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = list_selections(store)[0]
    name = "length (chars)"
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id)
    at.radio(key="sel_view").set_value("Scores").run()
    at.selectbox(key="sel_score").set_value(name).run()
    assert_clean(at)
    groups = browse_scores.selection_score_values(store, sel.selection_id, name)
    values = np.concatenate(list(groups.values()))
    lo, hi = float(values.min()), float(values.max())
    step = (hi - lo) / 200
    slider = at.slider(key=f"sel_score_range::{sel.selection_id}::{name}")
    assert slider.value == pytest.approx((lo, hi))  # the whole range at first
    a, b = lo + 40 * step, lo + 120 * step  # a range on the slider's grid
    slider.set_value((a, b)).run()
    assert_clean(at)
    inside = (values >= a) & (values <= b)
    n_sel = int(((groups["selected"] >= a) & (groups["selected"] <= b)).sum())
    assert 0 < inside.sum() < len(values)
    got = browse_scores.samples_in_score_range(store, sel.selection_id, name, a, b, 10_000)
    assert (got["n_total"], got["n_selected"]) == (int(inside.sum()), n_sel)
    assert len(got["rows"]) == got["n_total"]
    assert sum(r["selected"] for r in got["rows"]) == n_sel
    assert all(a <= r["value"] <= b for r in got["rows"])
    assert [r["value"] for r in got["rows"]] == sorted(r["value"] for r in got["rows"])
    assert f"**{int(inside.sum()):,} samples** with {name}" in markdown_text(at)
    shown = table(at, "sample_id", "value", "selected")
    assert shown["sample_id"].tolist() == [r["sample_id"] for r in got["rows"][:len(shown)]]
    at.button(key="sel_range_open").click().run()
    assert_clean(at)
    assert at.radio(key="sel_view").value == "Sample"
    assert at.text_input(key="sel_sample_id").value == got["rows"][0]["sample_id"]


def test_samples_in_score_range_refuses_a_bad_range(demo_store_path):
    store = Store(demo_store_path)
    sel = list_selections(store)[0]
    with pytest.raises(ValueError, match="not finite"):
        browse_scores.samples_in_score_range(store, sel.selection_id, "length (chars)", 0.0,
                                             float("nan"))
    flipped = browse_scores.samples_in_score_range(store, sel.selection_id, "length (chars)",
                                                   1e9, 0)
    assert flipped["n_total"] == sel.n_pool


def test_selections_map(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = list_selections(store)[0]
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id)
    at.radio(key="sel_view").set_value("Map").run()
    assert_clean(at)
    assert any(f"of {sel.n_pool:,} pool embeddings" in c.value for c in at.caption)
    data = browse_scores.embedding_map(store, sel.selection_id, 2000)
    assert sum(p["selection"] == "selected" for p in data["points"]) == sel.n_selected


def test_selections_open_a_sample(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = list_selections(store)[0]
    ids = selection_sample_ids(store, sel.selection_id)
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id).run()
    at.selectbox(key="sel_member_pick").set_value(ids[3]).run()
    at.button(key="sel_open_sample").click().run()
    assert_clean(at)
    assert at.radio(key="sel_view").value == "Sample"
    assert at.text_input(key="sel_sample_id").value == ids[3]
    m = metrics(at)
    assert m["pick"] == "#4"  # ids[3] is the 4th pick
    assert m["in this selection"] == "yes"
    sample = load_samples(store, "demo", 1)
    text = next(s for s in sample if s.sample_id == ids[3])
    assert text.response in [t.value for t in at.text]
    covers = table(at, "similarity", "drop %", "text")
    helped = table(at, "similarity", "text", nth=1)
    assert len(covers) > 0 and len(helped) > 0
    assert set(covers["dataset"]) == {"demo"}  # an instruction selection covers its pool
    # the kernel is the stage's: pool x pool utilities over the largest positive one
    scale = store.query(
        "WITH pool AS (SELECT sample_id FROM selection_pools WHERE selection_id = ?) "
        "SELECT max(utility) FROM utilities WHERE valid AND config = ? AND model = ? AND "
        "utility > 0 AND target_id <> example_id AND target_id IN (SELECT * FROM pool) AND "
        "example_id IN (SELECT * FROM pool)",
        [sel.selection_id, sel.config["utility_config"], sel.model])[0][0]
    best = store.query(
        "SELECT target_id, utility FROM utilities WHERE example_id = ? AND valid AND "
        "config = ? AND target_id <> example_id AND target_id IN (SELECT sample_id FROM "
        "selection_pools WHERE selection_id = ?) ORDER BY utility DESC LIMIT 1",
        [ids[3], sel.config["utility_config"], sel.selection_id])[0]
    others = covers[covers["sample_id"] != ids[3]]  # its own row covers itself too
    assert others["sample_id"].iloc[0] == best[0]
    assert others["similarity"].iloc[0] == pytest.approx(best[1] / scale, rel=1e-5)
    assert covers["similarity"].is_monotonic_decreasing
    assert "coverage" not in covers  # facility location: it would repeat the kernel value


def test_selections_sample_can_go_to_the_trash(demo_store, monkeypatch):
    from curator.store.trash import trash_page

    store = Store(demo_store)
    sel = list_selections(store)[0]
    ids = selection_sample_ids(store, sel.selection_id)
    at = make_app(demo_store, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id)
    at.radio(key="sel_view").set_value("Sample").run()
    at.text_input(key="sel_sample_id").input(ids[0]).run()
    at.text_input(key="sel_sample_trash_reason").input("leaks the answer").run()
    at.button(key="sel_sample_trash").click().run()
    assert_clean(at)
    assert [(r["sample_id"], r["reason"]) for r in trash_page(store, sel.dataset)] == \
        [(ids[0], "leaks the answer")]
    assert any("is in the trash" in m.value for m in at.success)
    at.button(key="sel_sample_restore").click().run()
    assert_clean(at)
    assert trash_page(store, sel.dataset) == []


def test_selections_sample_gradient_score(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    gast = next(s for s in list_selections(store) if s.method == "gast")
    first = selection_sample_ids(store, gast.selection_id)[0]
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(gast.selection_id)
    at.radio(key="sel_view").set_value("Sample").run()
    assert_clean(at)
    assert at.text_input(key="sel_sample_id").value == first
    grads = table(at, "selections", "score")
    stored = store.query("SELECT score FROM gradient_scores WHERE sample_id = ? AND layer = ''",
                         [first])[0][0]
    assert grads["score"].iloc[0] == pytest.approx(stored)
    assert gast.selection_id in grads["selections"].iloc[0]
    at.text_input(key="sel_sample_id").input("no-such-sample").run()
    assert not at.exception
    assert any("No sample" in w.value for w in at.warning)


def test_selections_compare(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    a, b = list_selections(store)[:2]
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(a.selection_id)
    at.radio(key="sel_view").set_value("Compare").run()
    at.selectbox(key="sel_other").set_value(b.selection_id).run()
    assert_clean(at)
    xa = set(selection_sample_ids(store, a.selection_id))
    xb = set(selection_sample_ids(store, b.selection_id))
    m = metrics(at)
    assert m["in both"] == str(len(xa & xb))
    assert m[f"only in {a.selection_id}"] == str(len(xa - xb))
    assert m[f"only in {b.selection_id}"] == str(len(xb - xa))
    only_a = table(at, "pick", "gain", "prompt")
    assert set(only_a["sample_id"]) <= xa - xb
    ranks = {i: n for n, i in enumerate(selection_sample_ids(store, a.selection_id))}
    assert [ranks[i] + 1 for i in only_a["sample_id"]] == list(only_a["pick"])  # #1 first
    assert len(only_a) == min(50, len(xa - xb))


# -- masks --------------------------------------------------------------------------------

def test_masks_heatmap_and_layer_subsets(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "masks")
    assert_clean(at)
    masked = at.selectbox(key="mask_sel").value
    rec = get_mask_record(store, masked)
    m = metrics(at)
    assert m["kept parameters"] == f"{rec['n_kept']:,}"
    assert m["model parameters"] == f"{rec['n_params']:,}"
    assert m["density (whole model)"] == f"{rec['density']:.2%}"
    cells = mask_heatmap(Path(store.artifacts) / rec["path"], rec["sha256"])
    assert sum(c["kept"] for c in cells) == rec["n_kept"]
    assert {c["layer"] for c in cells} >= {"model.layers.0", "model.layers.1"}
    layered = at.selectbox(key="mask_layer_sel").value
    layers = selection_layers(store, layered)
    assert m["layers"] == str(len(layers))
    sizes = {len(v) for v in layers.values()}
    assert m["samples per layer"] == f"{min(sizes):,}–{max(sizes):,}"


# -- export -------------------------------------------------------------------------------

def test_export_writes_into_the_store_exports_folder(demo_store, monkeypatch):
    store = Store(demo_store)
    sel = next(s for s in list_selections(store) if get_mask_record(store, s.selection_id))
    at = make_app(demo_store, monkeypatch, "export")
    assert_clean(at)
    at.selectbox(key="exp_sel").set_value(sel.selection_id)
    at.selectbox(key="exp_fmt").set_value("alpaca").run()
    at.button(key="exp_write").click().run()
    assert_clean(at)
    folder = demo_store / "exports" / f"{sel.selection_id}-alpaca"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["n_rows"] == sel.n_selected
    assert manifest["sample_ids"] == selection_sample_ids(store, sel.selection_id)
    assert (folder / "mask.safetensors").exists()
    assert any(str(folder) in s.value for s in at.success)
    assert table(at, "folder")["folder"].tolist() == [folder.name]
    # a second write never replaces the first
    at.button(key="exp_write").click().run()
    assert (demo_store / "exports" / f"{sel.selection_id}-alpaca-2" / "manifest.json").exists()

    at.button(key="exp_prepare").click().run()
    assert_clean(at)
    assert at.download_button(key="exp_download").label.startswith(
        f"Download {sel.selection_id}-alpaca.zip")


def test_export_zip_holds_subset_mask_and_manifest(demo_store_path):
    store = Store(demo_store_path)
    gast = next(s for s in list_selections(store) if s.method == "gast")
    name, data = exports.export_zip(store, gast.selection_id, "jsonl")
    with zipfile.ZipFile(BytesIO(data)) as zf:
        names = set(zf.namelist())
        stem = name.removesuffix(".zip")
        assert {f"{stem}/data.jsonl", f"{stem}/manifest.json", f"{stem}/layers.json"} <= names
        rows = zf.read(f"{stem}/data.jsonl").decode().splitlines()
    assert len(rows) == gast.n_selected


# -- a store that a writer holds ------------------------------------------------------------

def test_busy_store_shows_a_message_not_a_traceback(demo_store, monkeypatch):
    db = demo_store / "curator.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("CURATOR_APP_LOCK_TIMEOUT", "0.5")
        for page in ("overview", "versions", "selections", "masks", "export"):
            started = time.monotonic()
            at = make_app(demo_store, monkeypatch, page)
            assert not at.exception
            assert any("busy" in w.value for w in at.warning), page
            assert time.monotonic() - started < 20
    finally:
        holder.kill()
        holder.wait()
    at = make_app(demo_store, monkeypatch, "overview")  # the writer let go: it reads again
    assert_clean(at)


def test_versions_page_beyond_a_narrower_filter_stays_in_range(demo_store_path, monkeypatch):
    at = make_app(demo_store_path, monkeypatch, "versions")
    at.selectbox(key="ver_version").set_value(1)
    at.selectbox(key="ver_samples_size").set_value(25).run()
    at.number_input(key="ver_samples_page").set_value(10).run()
    at.text_input(key="ver_search").input("capital").run()
    assert_clean(at)
    n = matching_count(at)
    assert at.number_input(key="ver_samples_page").value == -(-n // 25)
    assert len(table(at, "prompt", "chars", "response")) == n - 25 * (-(-n // 25) - 1)


# -- issue 16: why selected, zero-gain picks, deep links, sorting, composition, labels ------

def open_sample_of(at: AppTest, selection_id: str, sample_id: str) -> AppTest:
    at.selectbox(key="sel_id").set_value(selection_id)
    at.radio(key="sel_view").set_value("Sample")
    at.session_state["sel_sample_id"] = sample_id  # the input may not be drawn yet
    return at.run()


def summary_line(at: AppTest) -> str:
    lines = [c.value for c in at.caption if "over the selection's own" in c.value]
    assert len(lines) == 1, lines
    return lines[0]


def test_why_selected_uses_the_selections_own_pool_targets_and_kernel(demo_store_path,
                                                                       monkeypatch):
    from curator.app.explain import explain, selection_kernels

    store = Store(demo_store_path)
    instruction, task = (get_selection(store, s) for s in ("sel-0001", "sel-0002"))
    assert (instruction.stage, task.stage, task.target) == ("instruction", "task",
                                                           "demo-target:1")
    both = [i for i in selection_sample_ids(store, "sel-0001")
            if i in set(selection_sample_ids(store, "sel-0002"))]
    sample = next(i for i in both
                  if browse_selections.member_rank(store, "sel-0002", i)["gain"] > 0)
    at = make_app(demo_store_path, monkeypatch, "selections")
    open_sample_of(at, "sel-0001", sample)
    assert_clean(at)
    covers_a = table(at, "similarity", "text")
    line_a = summary_line(at)
    open_sample_of(at, "sel-0002", sample)
    assert_clean(at)
    covers_b = table(at, "similarity", "text")
    line_b = summary_line(at)
    # the instruction selection covers rows of its pool, the task one targets of its set
    assert set(covers_a["dataset"]) == {"demo"}
    assert set(covers_b["dataset"]) == {"demo-target"}
    target_ids = set(version_sample_ids(store, "demo-target", 1))
    pool_ids = set(selection_pool_ids(store, "sel-0001"))
    assert set(covers_b["sample_id"]) <= target_ids
    assert set(covers_a["sample_id"]) <= pool_ids
    assert line_a != line_b and "targets" in line_b and "pool sample" in line_a
    rank = browse_selections.member_rank(store, "sel-0002", sample)
    assert f"{ordinal(rank['rank'] + 1)} pick, gain {rank['gain']:.3g}" in line_b
    # FLVMI shows no "who helps it" table: its function reads only target x pool pairs
    assert any("FLVMI reads only" in c.value for c in at.caption)
    # the rows show the text, not a few characters of the prompt
    assert covers_b["text"].str.len().max() > 60

    # reference: greedy's first gain is the sum of what the first pick covers (facility
    # location, conditional gain), plus eta times its best target coverage (FLVMI)
    for sid in ("sel-0001", "sel-0002", "sel-0003", "sel-0004"):
        sel = get_selection(store, sid)
        first = selection_sample_ids(store, sid)[0]
        member = browse_selections.member_rank(store, sid, first)
        why = explain(store, selection_kernels(store, sid), first, member, limit=10_000)
        total = sum(r["coverage"] for r in why["covers"])
        if sel.function == "flvmi":
            total += sel.config["eta"] * why["best"]
        assert total == pytest.approx(member["gain"], rel=1e-5), sid
        assert why["summary"].startswith(f"covers {why['n_cover']:,} ")
        assert "1st pick" in why["summary"]


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def test_why_selected_opens_a_row_and_steps_through_picks(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    ids = selection_sample_ids(store, "sel-0001")
    at = make_app(demo_store_path, monkeypatch, "selections")
    open_sample_of(at, "sel-0001", ids[5])
    at.button(key="sel_next").click().run()
    assert at.text_input(key="sel_sample_id").value == ids[6]
    at.button(key="sel_prev").click().run()
    at.button(key="sel_prev").click().run()
    assert at.text_input(key="sel_sample_id").value == ids[4]
    assert metrics(at)["pick"] == "#5"
    open_sample_of(at, "sel-0001", ids[0])
    assert at.button(key="sel_prev").disabled
    open_sample_of(at, "sel-0001", ids[-1])
    assert at.button(key="sel_next").disabled
    # (a click on a row of a table opens its sample: tests/app/test_browser.py)


def test_zero_gain_picks_are_flagged(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = get_selection(store, "sel-0002")
    zero = store.query("SELECT rank, sample_id FROM selection_members WHERE selection_id = ? "
                       "AND layer = '' AND gain = 0 ORDER BY rank", [sel.selection_id])
    assert len(zero) == sel.config["zero_gain_picks"] > 0
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id).run()
    assert_clean(at)
    assert metrics(at)["zero-gain picks"] == str(len(zero))
    at.selectbox(key="sel_members_size").set_value(100).run()
    members = table(at, "pick", "zero_gain")
    assert members.loc[members["zero_gain"], "pick"].tolist() == [r + 1 for r, _ in zero]
    curve = browse_selections.gain_curve(store, sel.selection_id)
    assert [p["rank"] for p in curve if p["zero_gain"]] == [r for r, _ in zero]
    open_sample_of(at, sel.selection_id, zero[0][1])
    assert_clean_but_info(at)
    assert metrics(at)["marginal gain"] == "0"
    assert any("zero-gain pick" in i.value for i in at.info)
    assert "gain 0 (a zero-gain pick" in summary_line(at)
    # the box and the line give the same reason (the box said "by its mean utility", the
    # line "by the evidence order")
    from curator.app.explain import ZERO_GAIN_WHY

    assert any(ZERO_GAIN_WHY in i.value for i in at.info)
    assert ZERO_GAIN_WHY in summary_line(at)
    # another kernel selection says its own count; one without gains (GAST) says none apply
    at.selectbox(key="sel_id").set_value("sel-0001").run()
    assert metrics(at)["zero-gain picks"] == str(
        get_selection(store, "sel-0001").config.get("zero_gain_picks", 0))
    at.selectbox(key="sel_id").set_value("sel-0005").run()
    assert metrics(at)["zero-gain picks"] == "none apply"


def assert_clean_but_info(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning


def test_members_sort_across_all_rows(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value("sel-0001")
    at.selectbox(key="sel_sort").set_value("chars")
    at.radio(key="sel_order").set_value("descending").run()
    assert_clean(at)
    everything = store.query(
        "SELECT m.rank, s.n_chars FROM selection_members m JOIN samples s USING (sample_id) "
        "WHERE selection_id = 'sel-0001' AND layer = '' ORDER BY s.n_chars DESC, m.rank")
    shown = table(at, "pick", "zero_gain")
    assert shown["pick"].tolist() == [r + 1 for r, _ in everything[:50]]
    assert shown["chars"].iloc[0] == max(c for _, c in everything)
    at.selectbox(key="sel_sort").set_value("gain")
    at.radio(key="sel_order").set_value("ascending").run()
    gains = store.query("SELECT gain FROM selection_members WHERE selection_id = 'sel-0001' "
                        "AND layer = '' ORDER BY gain, rank LIMIT 50")
    assert table(at, "pick", "zero_gain")["gain"].tolist() == pytest.approx(
        [g for (g,) in gains])
    assert at.query_params["sort"] == "gain"
    with pytest.raises(ValueError, match="unknown sort"):
        browse_selections.member_page(store, "sel-0001", sort="rank; DROP TABLE samples")


def test_deep_link_to_a_sample_survives_a_reload(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sample = selection_sample_ids(store, "sel-0003")[2]
    at = make_app_with_url(demo_store_path, monkeypatch, "selections",
                           {"selection": "sel-0003", "sample": sample})
    assert_clean(at)
    assert at.selectbox(key="sel_id").value == "sel-0003"
    assert at.radio(key="sel_view").value == "Sample"
    assert at.text_input(key="sel_sample_id").value == sample
    assert metrics(at)["pick"] == "#3"
    assert dict(at.query_params) == {"selection": "sel-0003", "view": "Sample",
                                     "sample": sample}
    # a reload is a new session with the same URL
    again = make_app_with_url(demo_store_path, monkeypatch, "selections",
                              dict(at.query_params))
    assert_clean(again)
    assert (again.selectbox(key="sel_id").value, again.radio(key="sel_view").value,
            again.text_input(key="sel_sample_id").value) == ("sel-0003", "Sample", sample)
    # moving on changes the URL
    again.radio(key="sel_view").set_value("Compare").run()
    assert again.query_params["view"] == "Compare" and "sample" not in again.query_params


def make_app_with_url(store_path, monkeypatch, page: str, params: dict) -> AppTest:
    monkeypatch.setenv("CURATOR_STORE", str(store_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.switch_page(f"views/{page}.py")
    at.query_params.update(params)
    return at.run()


def test_deep_link_with_unknown_values_says_so(demo_store_path, monkeypatch):
    at = make_app_with_url(demo_store_path, monkeypatch, "selections",
                           {"selection": "sel-9999", "view": "Nope"})
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "selection 'sel-9999'" in text and "view 'Nope'" in text
    assert at.selectbox(key="sel_id").value == "sel-0001"
    at = make_app_with_url(demo_store_path, monkeypatch, "versions",
                           {"dataset": "nope", "version": "x"})
    assert not at.exception
    assert any("dataset 'nope'" in w.value for w in at.warning)


def test_versions_deep_link_and_score_range(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    samples = load_samples(store, "demo", 2)
    family = samples[0].metadata["family"]
    at = make_app_with_url(demo_store_path, monkeypatch, "versions",
                           {"dataset": "demo", "version": "2", "field": "family",
                            "value": family})
    assert_clean(at)
    assert at.selectbox(key="ver_version").value == 2
    assert matching_count(at) == sum(s.metadata.get("family") == family for s in samples)
    assert at.query_params["value"] == family and at.query_params["version"] == "2"
    loss = next(o for o in at.selectbox(key="ver_score").options if o.startswith("loss"))
    at.selectbox(key="ver_score").set_value(loss).run()
    source = next(x for x in browse_versions.score_sources(store, "demo", 2) if x.label == loss)
    lo, hi = store.query(
        "SELECT min(l.distance), max(l.distance) FROM version_members m JOIN losses l USING "
        "(sample_id) WHERE m.dataset = 'demo' AND m.version = 2 AND l.valid AND l.model = ? "
        "AND l.config = ?", [source.model, source.config])[0]
    assert f"values from {lo:.6g} to {hi:.6g}" in " ".join(c.value for c in at.caption)


def test_composition_selected_against_not_selected(demo_store_path, monkeypatch):
    store = Store(demo_store_path)
    sel = get_selection(store, "sel-0002")
    picked = set(selection_sample_ids(store, sel.selection_id))
    pool = set(selection_pool_ids(store, sel.selection_id))
    expected: dict[str, list[int]] = {}
    for s in load_samples(store, "demo", sel.version):
        if s.sample_id in pool:
            counts = expected.setdefault(s.metadata.get("family", "(none)"), [0, 0])
            counts[0 if s.sample_id in picked else 1] += 1
    at = make_app(demo_store_path, monkeypatch, "selections")
    at.selectbox(key="sel_id").set_value(sel.selection_id)
    at.radio(key="sel_view").set_value("Composition").run()
    assert_clean(at)
    shown = table(at, "value", "selected", "not selected")
    assert {r["value"]: [r["selected"], r["not selected"]] for _, r in shown.iterrows()} \
        == expected
    assert shown["selected"].sum() == sel.n_selected
    at.radio(key="sel_view").set_value("Compare").run()
    assert_clean(at)
    assert any(m.value.startswith("**sel-0001**: family") for m in at.markdown)


def test_labels_and_units(demo_store_path, monkeypatch):
    at = make_app(demo_store_path, monkeypatch, "selections")
    m = metrics(at)
    assert m["selected"] == "90 of 300"
    assert m["selection time"].endswith(" s")
    assert "seconds" not in m
    # the model by the name it was loaded under (scoring records it), not a hash
    assert "model tiny-llama-0" in markdown_text(at)
    at.radio(key="sel_view").set_value("Map").run()
    assert_clean(at)
    options = at.select_slider(key="sel_map_points").options
    assert options[-1] == "300 (all)" and len(options) == 1
    # the favicon is drawn in the browser, never fetched from a font host
    source = APP_FILE.read_text()
    assert 'page_icon=":material' not in source
    # every bar of the metadata chart keeps its label
    at = make_app(demo_store_path, monkeypatch, "versions")
    specs = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    y = next(s["encoding"]["y"] for s in specs if s["encoding"]["y"].get("field") == "value")
    families = {s.metadata.get("family") for s in load_samples(Store(demo_store_path), "demo",
                                                              3)}
    assert y["axis"]["labelOverlap"] is False and set(y["sort"]) == families
    from curator.app.curator_ui import plural

    assert (plural(1, "sample"), plural(1200, "sample")) == ("1 sample", "1,200 samples")


def test_export_destination_and_every_export_listed(demo_store, monkeypatch, tmp_path):
    from curator.app import exporting

    store = Store(demo_store)
    # a schedule's exports: exports/NAME/<run>/ and a "latest" link beside them
    run = exporting.write_export(store, "sel-0001", "jsonl",
                                 demo_store / "exports" / "nightly")
    (demo_store / "exports" / "nightly" / "latest").symlink_to(run)
    listed = exporting.list_exports(demo_store / "exports")
    assert [(r["folder"], r["schedule"]) for r in listed] == [("nightly/sel-0001-jsonl",
                                                               "nightly")]
    at = make_app(demo_store, monkeypatch, "export")
    assert_clean(at)
    assert table(at, "folder", "schedule")["folder"].tolist() == ["nightly/sel-0001-jsonl"]
    elsewhere = tmp_path / "out"
    at.text_input(key="exp_dest").input(str(elsewhere)).run()
    at.selectbox(key="exp_sel").set_value("sel-0002").run()
    assert any(str(elsewhere / "sel-0002-jsonl") in c.value for c in at.caption)
    at.button(key="exp_write").click().run()
    assert_clean(at)
    assert (elsewhere / "sel-0002-jsonl" / "manifest.json").exists()
    # after writing, the caption names the next free folder
    assert any(str(elsewhere / "sel-0002-jsonl-2") in c.value for c in at.caption)
