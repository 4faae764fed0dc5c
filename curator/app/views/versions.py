"""Versions: a version's samples (search, metadata, length and score filters, paged), a diff
between two versions, the quarantine with its reasons, and the trash (samples set aside
from later selections, restorable)."""

from __future__ import annotations

import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.store.browse import SampleFilter

st.title("Versions")

ANY = "(any)"


def samples_view(dataset: str, version: int) -> None:
    keys = ui.read("metadata_keys", dataset, version)
    lo, hi = ui.read("length_range", dataset, version)
    sources = ui.read("score_sources", dataset, version)
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
        counts = ui.read("metadata_counts", dataset, version, meta_key)
        values = [ANY, *[v for v, _ in counts]]
        n_by = dict(counts)
        meta_value = c3.selectbox("value", values, key="ver_meta_value",
                                  format_func=lambda v: v if v == ANY else f"{v} ({n_by[v]:,})")
        meta_value = None if meta_value == ANY else meta_value
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
        min_score = c6.number_input("score ≥", value=None, key="ver_score_min", format="%.6f")
        max_score = c7.number_input("score ≤", value=None, key="ver_score_max", format="%.6f")
    flt = SampleFilter(search=search.strip() or None, meta_key=None if meta_key == ANY else
                       meta_key, meta_value=meta_value,
                       min_chars=length[0] if length[0] > lo else None,
                       max_chars=length[1] if length[1] < hi else None,
                       score=score, min_score=min_score, max_score=max_score)
    wanted = ui.page_state("ver_samples")
    rows, total = ui.read("sample_page", dataset, version, flt, *wanted)
    st.markdown(f"**{total:,}** matching samples")
    limit, offset = ui.pager(total, "ver_samples")
    if (limit, offset) != wanted:  # the page was out of range for this filter
        rows, total = ui.read("sample_page", dataset, version, flt, limit, offset)
    trashed = ui.read("trashed_ids", dataset)
    table = [{"sample_id": r["sample_id"], "prompt": r["prompt"], "response": r["response"],
              "chars": r["chars"], **({"score": r["score"]} if score else {}),
              **{k: r["metadata"].get(k) for k in keys[:4]},
              **({"trashed": r["sample_id"] in trashed} if trashed else {})} for r in rows]
    st.dataframe(table, key="ver_samples_table", hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large")})
    if rows:
        pick = st.selectbox("show a sample", [r["sample_id"] for r in rows],
                            key="ver_sample_pick")
        show_sample(pick)
        ui.trash_controls(dataset, pick, "ver")
    ui.trash_message()
    left, right = st.columns(2)
    hist = ui.read("length_histogram", dataset, version, bounds=(lo, hi))
    if hist:
        left.caption("length distribution (whole version)")
        left.bar_chart(pd.DataFrame(hist), x="chars", y="samples", height=200)
    if counts:
        right.caption(f"{meta_key} (whole version)")
        right.bar_chart(pd.DataFrame(counts[:30], columns=[meta_key, "samples"]), x=meta_key,
                        y="samples", horizontal=True, height=200)


def trash_view(dataset: str) -> None:
    total = ui.read("trash_count", dataset)
    ui.trash_message()
    if not total:
        st.info(f"The trash of {dataset} is empty. Move a sample there from the Samples "
                "view (or `curator trash add`); later selections leave trashed samples out.")
        return
    st.markdown(f"**{total:,}** samples in the trash of {dataset}: later selections leave "
                "them out; selections made before keep them.")
    limit, offset = ui.pager(total, "trash")
    rows = ui.read("trash_page", dataset, limit, offset)
    st.dataframe(rows, key="trash_table", hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large")})
    c1, c2, c3 = st.columns([4, 1, 1], vertical_alignment="bottom")
    pick = c1.selectbox("sample", [r["sample_id"] for r in rows], key="trash_pick")
    c2.button("Restore", key="trash_restore", on_click=ui.restore, args=(dataset, [pick]))
    c3.button("Restore all", key="trash_restore_all", on_click=ui.restore,
              args=(dataset, None))


def show_sample(sample_id: str) -> None:
    detail = ui.read("sample_detail", sample_id)
    if detail is None:
        return
    with st.expander(f"sample {sample_id} · {detail['chars']:,} characters", expanded=False):
        for m in detail["messages"]:
            st.markdown(f"**{m['role']}**")
            st.text(m["content"])
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
    diff = ui.read("diff_versions", dataset, old, new, 0)
    m1, m2, m3 = st.columns(3)
    m1.metric("added", f"{diff.n_added:,}")
    m2.metric("removed", f"{diff.n_removed:,}")
    m3.metric("unchanged", f"{diff.n_unchanged:,}")
    which = st.radio("show", ["added", "removed"], horizontal=True, key="diff_which")
    total = diff.n_added if which == "added" else diff.n_removed
    limit, offset = ui.pager(total, "diff")
    rows = ui.read("diff_page", dataset, old, new, which, limit, offset)
    st.dataframe(rows, key="diff_table", hide_index=True)


def quarantine_view(dataset: str, version: int) -> None:
    scope = st.radio("versions", ["this version", "all versions"], horizontal=True,
                     key="quar_scope")
    v = version if scope == "this version" else None
    reasons = ui.read("quarantine_reasons", dataset, v)
    if not reasons:
        st.success("Nothing quarantined: every input row was usable.")
        return
    st.markdown(f"**{sum(n for _, n in reasons):,}** quarantined rows")
    st.dataframe([{"reason": r, "rows": n} for r, n in reasons], key="quar_reasons",
                 hide_index=True)
    rows = ui.read("quarantine_rows", dataset, v, 500)
    st.caption(f"the first {len(rows):,} rows, with the raw input kept for inspection")
    st.dataframe(rows, key="quar_rows", hide_index=True,
                 column_config={"raw": st.column_config.TextColumn(width="large")})


with ui.guard():
    ui.require_store()
    datasets = [d["name"] for d in ui.read("list_datasets")]
    c1, c2, c3 = st.columns([2, 1, 3])
    dataset = c1.selectbox("dataset", datasets, key="ver_dataset")
    infos = ui.read("list_versions", dataset)
    if not infos:
        st.info(f"{dataset} has no versions yet.")
        st.stop()
    by_number = {v.version: v for v in infos}
    numbers = list(by_number)
    version = c2.selectbox("version", numbers, index=len(numbers) - 1, key="ver_version",
                           format_func=lambda n: f"v{n} ({by_number[n].n_members:,})")
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
    n_trash = ui.read("trash_count", dataset)
    view = st.radio("view", ["Samples", "Diff", "Quarantine", "Trash"], horizontal=True,
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
