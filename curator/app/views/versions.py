"""Versions: a version's samples (search, metadata, length and score filters, paged), a diff
between two versions, the quarantine with its reasons, and the trash (samples set aside
from later selections, restorable)."""

from __future__ import annotations

import functools

import altair as alt
import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.store import browse_versions
from curator.store import datasets as store_datasets
from curator.store import trash as store_trash
from curator.store.browse_filters import SampleFilter

st.title("Versions")

ANY = "(any)"
VIEWS = ["Samples", "Diff", "Quarantine", "Trash"]
URL = ("dataset", "version", "view", "search", "field", "value", "where", "page", "sample")
LISTS = ("where",)  # URL parameters that may repeat


def picked_row(table_key: str, ids: list[str]) -> None:
    """Dataframe callback: a clicked row becomes the sample shown below the table."""
    rows = ((st.session_state.get(table_key) or {}).get("selection") or {}).get("rows") or []
    if rows and 0 <= rows[0] < len(ids):
        st.session_state["ver_sample_pick"] = ids[rows[0]]


def samples_view(dataset: str, version: int) -> None:
    keys = ui.read(browse_versions.metadata_keys, dataset, version)
    lo, hi = ui.read(browse_versions.length_range, dataset, version)
    sources = ui.read(browse_versions.score_sources, dataset, version)
    c1, c2, c3 = st.columns([2, 1, 1])
    search = c1.text_input("search prompt and response", key="ver_search",
                           placeholder="words to find (case-insensitive)")
    key_opts = [ANY, *keys]
    meta_key = c2.selectbox("metadata field", key_opts,
                            index=key_opts.index("family") if "family" in keys else 0,
                            key="ver_meta_key")
    meta_value = None
    counts: list[tuple[str, int]] = []
    if meta_key != ANY:
        counts = ui.read(browse_versions.metadata_counts, dataset, version, meta_key)
        values = [ANY, *[v for v, _ in counts]]
        n_by = dict(counts)
        if st.session_state.get("ver_meta_value") not in (None, *values):
            st.warning(f"No {meta_key} value {st.session_state['ver_meta_value']!r} in "
                       f"{dataset} v{version}: showing every value.")
            st.session_state["ver_meta_value"] = ANY
        meta_value = c3.selectbox("value", values, key="ver_meta_value",
                                  format_func=lambda v: v if v == ANY else f"{v} ({n_by[v]:,})")
        meta_value = None if meta_value == ANY else meta_value
    options = [f"{k}={v}" for k, v, _n in ui.read(browse_versions.metadata_values, dataset,
                                                    version)]
    if any(o not in options for o in st.session_state.get("ver_where") or []):
        gone = [o for o in st.session_state["ver_where"] if o not in options]
        st.warning(f"No metadata {', '.join(gone)} in {dataset} v{version}; that filter is "
                   "left out.")
        st.session_state["ver_where"] = [o for o in st.session_state["ver_where"]
                                         if o in options]
    chosen = st.multiselect("more metadata filters", options, key="ver_where",
                            format_func=lambda o: o.replace("=", ": ", 1),
                            placeholder="any metadata",
                            help="values of one field: any of them; several fields: all")
    where = tuple(tuple(o.split("=", 1)) for o in chosen)
    c4, c5, c6, c7 = st.columns([2, 2, 1, 1])
    length = (lo, hi)
    if hi > lo:
        length = c4.slider("length (characters)", min_value=lo, max_value=hi, value=(lo, hi),
                           key="ver_length")
    score_labels = {"(none)": None, **{s.label: s for s in sources}}
    score_name = c5.selectbox("score column", list(score_labels), key="ver_score",
                              help="per-sample scores stored for this version "
                                   "(d(i) losses, gradient scores)")
    score = score_labels[score_name]
    min_score = max_score = None
    if score is not None:
        bounds = ui.read(browse_versions.score_range, dataset, version, score)
        span = ("no values" if bounds is None
                else f"values from {bounds[0]:.6g} to {bounds[1]:.6g}")
        min_score = c6.number_input("score ≥", value=None, key="ver_score_min", format="%.6f",
                                    placeholder="no bound", help=span)
        max_score = c7.number_input("score ≤", value=None, key="ver_score_max", format="%.6f",
                                    placeholder="no bound", help=span)
        c5.caption(f"{score.label}: {span}")
    flt = SampleFilter(search=search.strip() or None, meta_key=None if meta_key == ANY else
                       meta_key, meta_value=meta_value,
                       min_chars=length[0] if length[0] > lo else None,
                       max_chars=length[1] if length[1] < hi else None,
                       score=score, min_score=min_score, max_score=max_score, where=where)
    wanted = ui.page_state("ver_samples")
    rows, total = ui.read(browse_versions.sample_page, dataset, version, flt, *wanted)
    st.markdown(f"**{total:,}** matching samples")
    limit, offset = ui.pager(total, "ver_samples")
    if (limit, offset) != wanted:  # the page was out of range for this filter
        rows, total = ui.read(browse_versions.sample_page, dataset, version, flt, limit, offset)
    trashed = ui.read(store_trash.trashed_ids, dataset)
    table = [{"sample_id": r["sample_id"], "prompt": r["prompt"], "response": r["response"],
              "chars": r["chars"], **({"score": r["score"]} if score else {}),
              **{k: r["metadata"].get(k) for k in keys[:4]},
              **({"trashed": r["sample_id"] in trashed} if trashed else {})} for r in rows]
    ids = [r["sample_id"] for r in rows]
    st.dataframe(table, key="ver_samples_table", hide_index=True, selection_mode="single-row",
                 on_select=functools.partial(picked_row, "ver_samples_table", ids),
                 column_order=[c for c in (table[0] if table else {}) if c != "sample_id"]
                 + ["sample_id"],
                 column_config={"prompt": st.column_config.TextColumn(width="large"),
                                "response": st.column_config.TextColumn(width="medium"),
                                "sample_id": st.column_config.TextColumn("id", width="small"),
                                "chars": st.column_config.NumberColumn("characters",
                                                                       width="small"),
                                # a metadata value is read whole ("unit_conversion")
                                **{k: st.column_config.TextColumn(k, width="medium")
                                   for k in keys[:4]}})
    if rows:
        wanted = st.session_state.get("ver_sample_pick")
        if wanted not in (None, *ids):
            st.caption(f"Sample {wanted} is not on this page of the table (or does not "
                       "match the filter): showing the first row's sample.")
            st.session_state["ver_sample_pick"] = ids[0]
        pick = st.selectbox("show a sample (or click its row)", ids, key="ver_sample_pick")
        show_sample(pick, dataset, version)
        ui.trash_controls(dataset, pick, "ver")
    ui.trash_message()
    left, right = st.columns(2)
    hist = ui.read(browse_versions.length_histogram, dataset, version, bounds=(lo, hi))
    if hist:
        left.caption("length distribution (whole version)")
        left.bar_chart(pd.DataFrame(hist), x="chars", y="samples", height=200)
    if counts:
        right.caption(f"{meta_key} (whole version)")
        shown = counts[:30]
        # one row per value, each labelled (a fixed height dropped every other label)
        chart = alt.Chart(pd.DataFrame(shown, columns=["value", "samples"])).mark_bar().encode(
            y=alt.Y("value:N", sort=[v for v, _ in shown], title=meta_key,
                    axis=alt.Axis(labelOverlap=False, labelLimit=220)),
            x=alt.X("samples:Q"), tooltip=["value", "samples"])
        with right:
            st.altair_chart(chart, key="ver_meta_chart", height=max(160, 24 * len(shown) + 50))


def trash_view(dataset: str) -> None:
    total = ui.read(store_trash.trash_count, dataset)
    ui.trash_message()
    if not total:
        st.info(f"The trash of {dataset} is empty. Move a sample there from the Samples "
                "view (or `curator trash add`); later selections leave trashed samples out.")
        return
    st.markdown(f"**{total:,}** samples in the trash of {dataset}: later selections leave "
                "them out; selections made before keep them.")
    limit, offset = ui.pager(total, "trash")
    rows = ui.read(store_trash.trash_page, dataset, limit, offset)
    st.dataframe(rows, key="trash_table", hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large")})
    c1, c2, c3 = st.columns([4, 1, 1], vertical_alignment="bottom")
    pick = c1.selectbox("sample", [r["sample_id"] for r in rows], key="trash_pick")
    c2.button("Restore", key="trash_restore", on_click=ui.restore, args=(dataset, [pick]))
    c3.button("Restore all", key="trash_restore_all", on_click=ui.restore,
              args=(dataset, None))


def show_sample(sample_id: str, dataset: str, version: int) -> None:
    detail = ui.read(browse_versions.sample_detail, sample_id)
    if detail is None:
        return
    with st.expander(f"sample {sample_id} · {detail['chars']:,} characters", expanded=False):
        for m in detail["messages"]:
            st.markdown(f"**{m['role']}**")
            st.text(m["content"])
        meta = next((v["metadata"] for v in detail["versions"]
                     if (v["dataset"], v["version"]) == (dataset, version)), {})
        if meta:
            st.markdown("**metadata** " + " · ".join(f"{k}: `{v}`" for k, v in meta.items()))
        st.caption("in: " + ", ".join(f"{v['dataset']} v{v['version']}"
                                      for v in detail["versions"]))


def diff_view(dataset: str, versions: list[int], version: int) -> None:
    if len(versions) < 2:
        st.info("This dataset has one version: nothing to compare yet.")
        return
    c1, c2 = st.columns(2)
    new = c2.selectbox("new", versions, index=versions.index(version), key="diff_new",
                       format_func=lambda v: f"v{v}")
    older = [v for v in versions if v != new]
    default_old = max([v for v in older if v < new], default=older[0])
    old = c1.selectbox("old", older, index=older.index(default_old), key="diff_old",
                       format_func=lambda v: f"v{v}")
    diff = ui.read(store_datasets.diff_versions, dataset, old, new, 0)
    m1, m2, m3 = st.columns(3)
    m1.metric("added", f"{diff.n_added:,}")
    m2.metric("removed", f"{diff.n_removed:,}")
    m3.metric("unchanged", f"{diff.n_unchanged:,}")
    which = st.radio("show", ["added", "removed"], horizontal=True, key="diff_which")
    total = diff.n_added if which == "added" else diff.n_removed
    limit, offset = ui.pager(total, "diff")
    rows = ui.read(browse_versions.diff_page, dataset, old, new, which, limit, offset)
    st.dataframe(rows, key="diff_table", hide_index=True)


def quarantine_view(dataset: str, version: int) -> None:
    scope = st.radio("versions", ["this version", "all versions"], horizontal=True,
                     key="quar_scope")
    v = version if scope == "this version" else None
    reasons = ui.read(browse_versions.quarantine_reasons, dataset, v)
    if not reasons:
        st.success("Nothing quarantined: every input row was usable.")
        return
    st.markdown(f"**{sum(n for _, n in reasons):,}** quarantined rows")
    st.dataframe([{"reason": r, "rows": n} for r, n in reasons], key="quar_reasons",
                 hide_index=True)
    rows = ui.read(store_datasets.quarantine_rows, dataset, v, 500)
    st.caption(f"the first {len(rows):,} rows, with the raw input kept for inspection")
    st.dataframe(rows, key="quar_rows", hide_index=True,
                 column_config={"raw": st.column_config.TextColumn(width="large")})


def apply_url(datasets: list[str]) -> dict[str, str]:
    """A link's dataset, view, search and filter become the widgets' state (the version,
    value and sample are checked once the dataset is known)."""
    params = ui.url_params("versions", URL, lists=LISTS)
    ui.url_choice(params, "dataset", "ver_dataset", datasets, "dataset")
    ui.url_choice(params, "view", "ver_view", VIEWS, "view")
    if "search" in params:
        st.session_state["ver_search"] = params["search"]
    return params


def current_url(dataset: str, version: int, view: str) -> dict:
    state = st.session_state
    out = {"dataset": dataset, "version": version, "view": view}
    if view == "Samples":
        field = state.get("ver_meta_key")
        out.update(search=state.get("ver_search"), field=None if field == ANY else field,
                   value=None if state.get("ver_meta_value") == ANY else
                   state.get("ver_meta_value"), where=list(state.get("ver_where") or []),
                   page=page if (page := int(state.get("ver_samples_page") or 1)) > 1 else None,
                   sample=state.get("ver_sample_pick"))
    return out


with ui.guard():
    ui.require_store()
    datasets = [d["name"] for d in ui.read(store_datasets.list_datasets)]
    params = apply_url(datasets)
    c1, c2, c3 = st.columns([2, 1, 3])
    dataset = c1.selectbox("dataset", datasets, key="ver_dataset")
    infos = ui.read(store_datasets.list_versions, dataset)
    if not infos:
        st.info(f"{dataset} has no versions yet.")
        st.stop()
    by_number = {v.version: v for v in infos}
    numbers = list(by_number)
    ui.url_choice(params, "version", "ver_version", numbers, "version", int)
    if "field" in params:
        ui.url_choice(params, "field", "ver_meta_key",
                      [ANY, *ui.read(browse_versions.metadata_keys, dataset,
                                     st.session_state.get("ver_version", numbers[-1]))],
                      "metadata field")
    if "value" in params:
        st.session_state["ver_meta_value"] = params["value"]
    if "where" in params:
        st.session_state["ver_where"] = list(params["where"])
    if "page" in params:
        ui.url_page(params["page"], "ver_samples")
    if "sample" in params:
        st.session_state["ver_sample_pick"] = params["sample"]
    if "ver_version" in st.session_state and st.session_state["ver_version"] not in numbers:
        del st.session_state["ver_version"]  # another dataset's version: take the newest
    # the newest by default; no default once the state (e.g. a link) holds one
    newest = None if "ver_version" in st.session_state else len(numbers) - 1
    version = c2.selectbox("version", numbers, index=newest, key="ver_version",
                           format_func=lambda n: f"v{n} ({ui.plural(by_number[n].n_members, 'sample')})")
    info = by_number[version]
    created = info.created_at.strftime("%Y-%m-%d %H:%M")
    note = f"  \n{info.message}" if info.message else ""
    c3.caption(f"source: `{info.source}`  \nmode: {info.mode} · created {created}{note}")
    cols = st.columns(5)
    for col, (label, value) in zip(cols, [("samples", info.n_members), ("added", info.n_added),
                                          ("removed", info.n_removed),
                                          ("duplicates", info.n_duplicates),
                                          ("quarantined", info.n_quarantined)], strict=True):
        col.metric(label, f"{value:,}")
    n_trash = ui.read(store_trash.trash_count, dataset)
    view = st.radio("view", VIEWS, horizontal=True,
                    key="ver_view", label_visibility="collapsed",
                    format_func=lambda v: f"Trash ({n_trash:,})" if v == "Trash" and n_trash
                    else v)
    if view == "Samples":
        samples_view(dataset, version)
    elif view == "Diff":
        diff_view(dataset, numbers, version)
    elif view == "Quarantine":
        quarantine_view(dataset, version)
    else:
        trash_view(dataset)
    ui.write_url("versions", current_url(dataset, version, view))
