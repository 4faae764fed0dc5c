"""Selections: what each selection is (stage, method, budget, objective, config), its members
in pick order with marginal gains, scores of selected against not selected, a 2-D map of the
embeddings, one sample explained, and two selections side by side."""

from __future__ import annotations

import functools
import json

import altair as alt
import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.store.browse import histogram
from curator.vocabulary import GRADIENT_METHODS

st.title("Selections")

VIEWS = ["Members", "Scores", "Map", "Sample", "Compare"]


def open_sample(sample_id: str) -> None:
    """Button callback: show one sample (runs before the page, so it may set widgets)."""
    st.session_state["sel_view"] = "Sample"
    st.session_state["sel_sample_id"] = sample_id


def header(sel) -> None:
    cols = st.columns(6)
    for col, (label, value) in zip(cols, [
            ("stage", sel.stage), ("method", sel.method), ("budget", sel.budget),
            ("selected", f"{sel.n_selected:,} of {sel.n_pool:,}"),
            ("objective", "-" if sel.objective is None else f"{sel.objective:.4g}"),
            ("seconds", "-" if sel.seconds is None else f"{sel.seconds:.1f}")], strict=True):
        col.metric(label, value)
    facts = [f"dataset **{sel.dataset} v{sel.version}**",
             f"function `{sel.function or '-'}`"]
    if sel.parent:
        facts.append(f"conditioned on **{sel.parent}**")
    if sel.target:
        facts.append(f"target set **{sel.target}**")
    if sel.model:
        facts.append(f"model `{sel.model[:16]}`")
    st.markdown(" · ".join(facts))
    with st.expander("config", expanded=False):
        st.code(json.dumps(sel.config, indent=2, default=str), language="json")


def members_view(sel) -> None:
    curve = ui.read("gain_curve", sel.selection_id)
    if curve and any(p["gain"] for p in curve):
        st.caption("marginal gain by pick order")
        st.line_chart(pd.DataFrame(curve), x="rank", y="gain", height=180)
    limit, offset = ui.pager(sel.n_selected, "sel_members")
    rows = ui.read("member_page", sel.selection_id, limit, offset)
    st.dataframe(rows, key="sel_members_table", hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large"),
                                "gain": st.column_config.NumberColumn(format="%.5f"),
                                "score": st.column_config.NumberColumn(format="%.5f")})
    if rows:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        labels = {r["sample_id"]: f"#{r['rank']} · {r['prompt'][:70]}" for r in rows}
        pick = c1.selectbox("sample", list(labels), key="sel_member_pick",
                            format_func=labels.__getitem__)
        c2.button("Open sample", key="sel_open_sample", on_click=open_sample, args=(pick,))


def scores_view(sel) -> None:
    options = ui.read("selection_score_options", sel.selection_id)
    name = st.selectbox("score", options, key="sel_score")
    groups = ui.read("selection_score_values", sel.selection_id, name)
    n_sel, n_not = len(groups["selected"]), len(groups["not selected"])
    c1, c2, c3 = st.columns(3)
    c1.metric("selected: mean", "-" if not n_sel else f"{groups['selected'].mean():.4g}",
              help=f"{n_sel:,} samples with this score")
    c2.metric("not selected: mean",
              "-" if not n_not else f"{groups['not selected'].mean():.4g}",
              help=f"{n_not:,} samples with this score")
    c3.metric("samples with a value", f"{n_sel + n_not:,}")
    hist = histogram(groups)
    if not hist:
        st.info("No stored values of this score for the selection's pool.")
        return
    lo, hi = hist[0]["value"], hist[-1]["value_end"]
    range_key = f"sel_score_range::{sel.selection_id}::{name}"
    brush = alt.selection_interval(encodings=["x"], name="brush")
    chart = alt.Chart(pd.DataFrame(hist)).mark_bar(opacity=0.7).encode(
        x=alt.X("value:Q", title=name), x2="value_end:Q",
        y=alt.Y("samples:Q", stack=None), y2=alt.datum(0),
        color=alt.Color("group:N", scale=alt.Scale(domain=["selected", "not selected"],
                                                   range=["#e4572e", "#7f8fa6"])),
        tooltip=["group", alt.Tooltip("value:Q", format=".4g", title="from"),
                 alt.Tooltip("value_end:Q", format=".4g", title="to"), "samples"]
    ).add_params(brush)
    st.altair_chart(chart, key="sel_score_chart", selection_mode="brush",
                    on_select=functools.partial(brushed, range_key, lo, hi))
    st.caption("Drag across the histogram (or move the slider) to list the samples in a "
               "range.")
    if lo == hi:
        rng = (lo, hi)
    else:
        # The state, not a default value, holds the range (the chart's callback sets it);
        # a range kept from before the scores changed is clamped back inside them.
        a, b = st.session_state.get(range_key, (lo, hi))
        st.session_state[range_key] = (min(max(float(a), lo), hi), max(min(float(b), hi), lo))
        rng = st.slider("value range", min_value=float(lo), max_value=float(hi),
                        step=(hi - lo) / 200, format="%.4g", key=range_key)
    in_range_view(sel, name, rng)


def brushed(range_key: str, lo: float, hi: float) -> None:
    """Chart callback: a brushed x range becomes the range slider's value (callbacks run
    before the page, so they may set a widget's state)."""
    event = st.session_state.get("sel_score_chart") or {}
    picked = ((event.get("selection") or {}).get("brush") or {}).get("value")
    if picked and len(picked) == 2:
        a, b = sorted(float(x) for x in picked)
        st.session_state[range_key] = (max(lo, a), min(hi, b))
    elif lo < hi:
        st.session_state[range_key] = (float(lo), float(hi))  # brush cleared: everything


def in_range_view(sel, name: str, rng: tuple[float, float]) -> None:
    first = ui.read("samples_in_score_range", sel.selection_id, name, rng[0], rng[1], 1, 0)
    total = first["n_total"]
    st.markdown(f"**{total:,}** samples with {name} in [{rng[0]:.4g}, {rng[1]:.4g}], "
                f"**{first['n_selected']:,}** of them selected")
    if not total:
        return
    limit, offset = ui.pager(total, "sel_range")
    rows = ui.read("samples_in_score_range", sel.selection_id, name, rng[0], rng[1], limit,
                   offset)["rows"]
    st.dataframe(rows, hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large"),
                                "value": st.column_config.NumberColumn(name, format="%.5g")})
    if rows:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        labels = {r["sample_id"]: f"{r['value']:.4g} · "
                  f"{'#' + str(r['rank']) if r['selected'] else 'not selected'} · "
                  f"{r['prompt'][:60]}" for r in rows}
        pick = c1.selectbox("sample", list(labels), key="sel_range_pick",
                            format_func=labels.__getitem__)
        c2.button("Open sample", key="sel_range_open", on_click=open_sample, args=(pick,))


def map_view(sel) -> None:
    points = st.select_slider("points", [500, 1000, 2000, 3000, 5000], value=2000,
                              key="sel_map_points")
    data = ui.read("embedding_map", sel.selection_id, points)
    if not data["points"]:
        st.info("No stored embeddings cover this selection's pool "
                "(`curator score` computes them).")
        return
    st.caption(f"PCA of {data['n_shown']:,} of {data['n_pool']:,} pool embeddings "
               f"(embedder `{data['embedder'][:40]}`)")
    chart = alt.Chart(pd.DataFrame(data["points"])).mark_circle(size=40, opacity=0.75).encode(
        x=alt.X("x:Q", title="PC 1"), y=alt.Y("y:Q", title="PC 2"),
        color=alt.Color("selection:N", scale=alt.Scale(domain=["selected", "not selected"],
                                                       range=["#e4572e", "#9fb3c8"])),
        tooltip=["sample_id", "selection", "prompt"])
    st.altair_chart(chart, key="sel_map_chart")


def sample_view(sel) -> None:
    first = ui.read("member_page", sel.selection_id, 1, 0)
    default = first[0]["sample_id"] if first else ""
    if not st.session_state.get("sel_sample_id"):
        st.session_state["sel_sample_id"] = default
    sample_id = st.text_input("sample id", key="sel_sample_id",
                              help="open one from the Members view, or paste an id").strip()
    detail = ui.read("sample_detail", sample_id) if sample_id else None
    if detail is None:
        st.warning(f"No sample {sample_id!r} in the store.")
        return
    member = ui.read("member_rank", sel.selection_id, sample_id)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("in this selection", "yes" if member else "no")
    c2.metric("pick order", "-" if not member else f"#{member['rank']}")
    c3.metric("marginal gain", "-" if not member or member["gain"] is None
              else f"{member['gain']:.5f}")
    c4.metric("characters", f"{detail['chars']:,}")
    for m in detail["messages"]:
        with st.chat_message("user" if m["role"] == "user" else "assistant"
                             if m["role"] == "assistant" else "ai"):
            st.markdown(f"**{m['role']}**")
            st.text(m["content"])
    key = ui.read("utility_key", sample_id, sel.selection_id)
    left, right = st.columns(2)
    if key is None:
        st.info("No pairwise utilities involve this sample.")
    else:
        covers = ui.read("top_utilities", sample_id, key[0], key[1], "example")
        helped = ui.read("top_utilities", sample_id, key[0], key[1], "target")
        left.markdown("**Targets it covers best**: UF(target, this sample)")
        left.dataframe(covers, key="sel_sample_covers", hide_index=True)
        right.markdown("**Examples that help it most**: UF(this sample, example)")
        right.dataframe(helped, key="sel_sample_helped", hide_index=True)
    grads = ui.read("sample_gradient_scores", sample_id)
    st.markdown("**Gradient scores** ⟨u, g⟩ stored for this sample")
    if grads:
        st.dataframe(grads, key="sel_sample_grads", hide_index=True)
    else:
        st.caption(f"none stored (gradient methods: {', '.join(GRADIENT_METHODS)})")
    st.caption("in: " + ", ".join(f"{v['dataset']} v{v['version']}"
                                  for v in detail["versions"]))
    if any(v["dataset"] == sel.dataset for v in detail["versions"]):
        ui.trash_controls(sel.dataset, sample_id, "sel_sample")
    ui.trash_message()


def compare_view(sel) -> None:
    sels = ui.read("list_selections_all")
    others = [s.selection_id for s in sels if s.selection_id != sel.selection_id]
    if not others:
        st.info("Only one selection so far: nothing to compare with.")
        return
    other = ui.pick_selection("sel_other", "compare with",
                              only=others).selection_id
    o = ui.read("selection_overlap", sel.selection_id, other)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("in both", f"{o['both']:,}")
    c2.metric(f"only in {sel.selection_id}", f"{o['only_a']:,}")
    c3.metric(f"only in {other}", f"{o['only_b']:,}")
    c4.metric("Jaccard", f"{o['both'] / max(1, o['union']):.2f}")
    left, right = st.columns(2)
    left.markdown(f"**What {sel.selection_id} adds** (first 50, pick order)")
    left.dataframe(ui.read("selection_only", sel.selection_id, other, 50, 0),
                   key="sel_only_a", hide_index=True)
    right.markdown(f"**What {other} adds** (first 50, pick order)")
    right.dataframe(ui.read("selection_only", other, sel.selection_id, 50, 0),
                    key="sel_only_b", hide_index=True)


with ui.guard():
    ui.require_store()
    table = ui.read("selections_table")
    if not table:
        st.info("No selections yet: `curator select --dataset NAME --stage instruction` "
                "or `curator curate recipe.yaml` makes one.")
        st.stop()
    with st.expander(f"all selections ({len(table)})", expanded=False):
        st.dataframe(table, key="sel_all_table", hide_index=True)
    sel = ui.pick_selection("sel_id")
    header(sel)
    view = st.radio("view", VIEWS, horizontal=True, key="sel_view",
                    label_visibility="collapsed")
    {"Members": members_view, "Scores": scores_view, "Map": map_view,
     "Sample": sample_view, "Compare": compare_view}[view](sel)
