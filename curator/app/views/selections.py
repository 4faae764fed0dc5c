"""Selections: what each selection is (stage, method, budget, objective, config), its members
with marginal gains (zero-gain picks flagged), its composition by a metadata field, scores
of selected against not selected, a 2-D map of the embeddings, one sample and why it was
selected, and two selections side by side. The page's state lives in the URL."""

from __future__ import annotations

import functools
import json

import altair as alt
import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.app.explain import HOW_COMPUTED, ZERO_GAIN_WHY, objective_share, percent, pick_label
from curator.app.views.quality import quality_signals
from curator.store import browse_scores, browse_selections, browse_versions, selection_rows
from curator.vocabulary import GRADIENT_METHODS, KERNEL_METHODS

st.title("Selections")

VIEWS = ["Members", "Composition", "Scores", "Map", "Sample", "Compare"]
SORTS = {"rank": "pick order", "gain": "marginal gain", "score": "score", "chars": "length"}
# a clicked column header sorts every member by it (the table's own sorting is off)
SORT_COLUMNS = {"pick": "rank", "gain": "gain", "score": "score", "chars": "chars"}
URL = ("selection", "view", "sample", "sort", "order", "field", "other", "search", "where",
       "page")
LISTS = ("where",)  # URL parameters that may repeat


PICK_COLUMN = st.column_config.NumberColumn("pick", help="pick order: #1 was picked first",
                                           format="#%d", width="small")


def numbered(rows: list[dict]) -> list[dict]:
    """Rows with the stored 0-based ``rank`` shown as the pick number people count (#1
    first; none for a sample that was not picked)."""
    return [{"pick": None if r.get("rank") is None else r["rank"] + 1,
             **{k: v for k, v in r.items() if k != "rank"}} for r in rows]


def follow_selection(selection_id: str) -> None:
    """Another selection was chosen: the sample picked in the previous one's table and its
    page are dropped, so "Open sample" opens one of this one (the Sample view keeps the
    sample it shows: the same sample's place in another selection)."""
    previous = st.session_state.get("_sel_shown")
    st.session_state["_sel_shown"] = selection_id
    page_from_url = st.session_state.pop("_sel_page_from_url", False)
    if previous is None or previous == selection_id:
        return
    for key in ("sel_member_pick", "sel_range_pick"):
        st.session_state.pop(key, None)
    if not page_from_url:
        st.session_state["sel_members_page"] = 1


def open_sample(sample_id: str) -> None:
    """Button callback: show one sample (runs before the page, so it may set widgets)."""
    st.session_state["sel_view"] = "Sample"
    st.session_state["sel_sample_id"] = sample_id


def opened_row(table_key: str, ids: list[str]) -> None:
    """Dataframe callback: a clicked row opens its sample; a clicked column header (in the
    members table) sorts every member by that column, again: the other way round."""
    picked = (st.session_state.get(table_key) or {}).get("selection") or {}
    rows = picked.get("rows") or []
    if rows and 0 <= rows[0] < len(ids):
        open_sample(ids[rows[0]])
        return
    columns = picked.get("columns") or []
    sort = SORT_COLUMNS.get(columns[0]) if columns else None
    if sort is not None:
        if st.session_state.get("sel_sort") == sort:
            st.session_state["sel_order"] = ("ascending" if st.session_state.get(
                "sel_order") == "descending" else "descending")
        else:
            st.session_state["sel_sort"] = sort
            st.session_state["sel_order"] = "ascending" if sort == "rank" else "descending"
        st.session_state["sel_members_page"] = 1


def step_sample(selection_id: str, rank: int) -> None:
    """Previous / next callback: the member picked ``rank``-th."""
    sample_id = ui.read(browse_selections.member_at, selection_id, rank)
    if sample_id:
        st.session_state["sel_sample_id"] = sample_id


def header(sel) -> None:
    zero = ui.read(browse_selections.zero_gain_count, sel.selection_id)
    has_gains = member_columns(sel)["gain"]
    # what the stage recorded (older stores: zero_gain_refilled), said when it differs
    recorded = (sel.config or {}).get("zero_gain_picks",
                                      (sel.config or {}).get("zero_gain_refilled"))
    zero_help = ("picks that added nothing to the objective (marginal gain exactly 0): "
                 f"{ZERO_GAIN_WHY}")
    if recorded is not None and recorded != zero:
        zero_help += f"; the stage recorded {recorded}"
    if not has_gains:
        zero_help = (f"{sel.method} does not pick by marginal gains, so no pick can be a "
                     "zero-gain pick")
    # words in one line (they are too long for a metric at 1,280 px), numbers as metrics
    st.markdown(f"**{sel.stage}** stage · method **{sel.method}**"
                + (f" · function **{sel.function}**" if sel.function else "")
                + f" · budget **{sel.budget}**")
    for col, (label, value, help_) in zip(st.columns(4), [
            ("selected", f"{sel.n_selected:,} of {sel.n_pool:,}",
             "samples picked, of the pool they were picked from"),
            ("zero-gain picks", f"{zero:,}" if has_gains else "none apply", zero_help),
            ("objective", "-" if sel.objective is None else f"{sel.objective:.4g}",
             "value of the set function at the selected subset (the picks' marginal gains "
             "add up to it)" if has_gains else "value the method reports for its subset"),
            ("selection time", "-" if sel.seconds is None else f"{sel.seconds:.1f} s",
             "wall time of the stage: scoring the pairs it needed and greedy")], strict=True):
        col.metric(label, value, help=help_)
    facts = [f"dataset **{sel.dataset} v{sel.version}**"]
    if sel.parent:
        facts.append(f"conditioned on **{sel.parent}**")
    if sel.target:
        facts.append(f"target set **{sel.target}**")
    if sel.model:
        facts.append(f"model {ui.read(browse_selections.model_label, sel.model)}")
    st.markdown(" · ".join(facts))
    with st.expander("config", expanded=False):
        st.code(json.dumps(sel.config, indent=2, default=str), language="json")


def where_label(option: str) -> str:
    field, _, value = option.partition("=")
    return f"{field}: {value}"


def member_columns(sel) -> dict[str, bool]:
    """Which of gain and score the selection has: a value for some member, and for the
    gain a method that picks by marginal gains (random stores 0 for every pick)."""
    have = dict(ui.read(browse_selections.member_columns, sel.selection_id))
    have["gain"] = have["gain"] and sel.method in KERNEL_METHODS
    return have


def sort_options(sel) -> list[str]:
    """The sorts this selection can use: no column without a value for any member."""
    have = member_columns(sel)
    return [k for k in SORTS if k not in ("gain", "score") or have[k]]


def members_view(sel) -> None:
    curve = ui.read(browse_selections.gain_curve, sel.selection_id)
    if curve and any(p["gain"] for p in curve):
        st.caption("marginal gain by pick (zero-gain picks in red)")
        df = pd.DataFrame(curve)
        df["pick"] = df["zero_gain"].map({True: "zero gain", False: "gain > 0"})
        df["number"] = df["rank"] + 1
        line = alt.Chart(df).mark_line(color="#7f8fa6").encode(
            x=alt.X("number:Q", title="pick (#1 first)"),
            y=alt.Y("gain:Q", title="marginal gain"))
        dots = alt.Chart(df).mark_circle(size=28).encode(
            x="number:Q", y="gain:Q",
            color=alt.Color("pick:N", scale=alt.Scale(domain=["gain > 0", "zero gain"],
                                                      range=["#4c78a8", "#e4572e"]),
                            title=None),
            tooltip=[alt.Tooltip("number:Q", title="pick"),
                     alt.Tooltip("gain:Q", format=".5f"), "pick"])
        st.altair_chart(line + dots, key="sel_gain_chart", height=200)
    options = [f"{k}={v}" for k, v, _n in ui.read(browse_versions.metadata_values,
                                                    sel.dataset, sel.version)]
    if any(o not in options for o in st.session_state.get("sel_where") or []):
        gone = [o for o in st.session_state["sel_where"] if o not in options]
        st.warning(f"No metadata {', '.join(where_label(o) for o in gone)} in {sel.dataset} "
                   f"v{sel.version}; that filter is left out.")
        st.session_state["sel_where"] = [o for o in st.session_state["sel_where"]
                                         if o in options]
    c1, c2 = st.columns([2, 3])
    search = c1.text_input("search prompt and response", key="sel_search",
                           placeholder="words to find (case-insensitive)")
    chosen = c2.multiselect("metadata filters", options, key="sel_where",
                            format_func=where_label, placeholder="any metadata",
                            help="values of one field: any of them; several fields: all")
    where = tuple(tuple(o.split("=", 1)) for o in chosen)
    sorts = sort_options(sel)
    if st.session_state.get("sel_sort") not in (None, *sorts):
        del st.session_state["sel_sort"]  # e.g. score, which this selection has none of
    c1, c2 = st.columns([2, 1])
    sort = c1.selectbox("sort all members by", sorts, key="sel_sort",
                        format_func=SORTS.__getitem__,
                        help="or click a column header (again: the other way round)")
    order = c2.radio("order", ["ascending", "descending"], horizontal=True, key="sel_order")
    query = (sel.selection_id, sort, order == "descending", search.strip() or None, where)
    wanted = ui.page_state("sel_members")
    rows, total = ui.read(browse_selections.member_search, query[0], *wanted, *query[1:])
    if search.strip() or where:
        st.markdown(f"**{total:,}** of {sel.n_selected:,} members match")
    limit, offset = ui.pager(total, "sel_members")
    if (limit, offset) != wanted:
        rows, total = ui.read(browse_selections.member_search, query[0], limit, offset, *query[1:])
    have = member_columns(sel)
    keys = sorted({k for r in rows for k in r["metadata"]})[:3]
    table = [{"pick": r["rank"] + 1, "gain": r["gain"], "zero_gain": r["zero_gain"],
              "score": r["score"], "chars": r["chars"], "prompt": r["prompt"],
              "response": r["response"], **{f"meta: {k}": r["metadata"].get(k) for k in keys},
              "sample_id": r["sample_id"]} for r in rows]
    ids = [r["sample_id"] for r in rows]
    shown = ["pick", *(["gain", "zero_gain"] if have["gain"] else []),
             *(["score"] if have["score"] else []), "chars", "prompt", "response",
             *[f"meta: {k}" for k in keys], "sample_id"]
    st.dataframe(
        pd.DataFrame(table, columns=shown)[shown], key="sel_members_table",
        hide_index=True, on_select=functools.partial(opened_row, "sel_members_table", ids),
        selection_mode=["single-row", "single-column"], column_order=shown,
        column_config={"pick": PICK_COLUMN,
                       "prompt": st.column_config.TextColumn(width="large"),
                       "response": st.column_config.TextColumn(width="medium"),
                       "sample_id": st.column_config.TextColumn("id", width="small"),
                       "zero_gain": st.column_config.CheckboxColumn(
                           "gain 0", help="picked at a marginal gain of exactly 0",
                           width="small"),
                       "gain": st.column_config.NumberColumn(format="%.5f", width="small"),
                       "score": st.column_config.NumberColumn(format="%.5f", width="small"),
                       "chars": st.column_config.NumberColumn("characters", width="small"),
                       **{f"meta: {k}": st.column_config.TextColumn(k, width="medium")
                          for k in keys}})
    st.caption("Click a row to open its sample; click a column header to sort every member "
               "by it.")
    if rows:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        labels = {r["sample_id"]: f"{pick_label(r['rank'])} · {r['prompt'][:70]}"
                  for r in rows}
        if st.session_state.get("sel_member_pick") not in (None, *labels):
            del st.session_state["sel_member_pick"]  # not on this page: the first row
        pick = c1.selectbox("sample", list(labels), key="sel_member_pick",
                            format_func=labels.__getitem__)
        c2.button("Open sample", key="sel_open_sample", on_click=open_sample, args=(pick,))


def composition_chart(rows: list[dict], field: str, key: str) -> None:
    long = pd.DataFrame(rows).melt(id_vars="value", value_vars=["selected", "not selected"],
                                   var_name="group", value_name="samples")
    order = [r["value"] for r in rows]
    chart = alt.Chart(long).mark_bar().encode(
        y=alt.Y("value:N", sort=order, title=field, axis=alt.Axis(labelOverlap=False,
                                                                  labelLimit=220)),
        x=alt.X("samples:Q", stack=True),
        color=alt.Color("group:N", scale=alt.Scale(domain=["selected", "not selected"],
                                                   range=["#e4572e", "#9fb3c8"])),
        tooltip=["value", "group", "samples"])
    st.altair_chart(chart, key=key, height=max(160, 26 * len(rows) + 60))


def composition_table(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        n = r["selected"] + r["not selected"]
        out.append({**r, "pool": n, "share selected": r["selected"] / n if n else 0.0})
    return out


def composition_view(sel) -> None:
    keys = ui.read(browse_selections.selection_metadata_keys, sel.selection_id)
    if not keys:
        st.info(f"{sel.dataset} v{sel.version} has no metadata fields to break down.")
        return
    if st.session_state.get("sel_comp_field") not in (None, *keys):
        st.warning(f"No metadata field {st.session_state['sel_comp_field']!r} in "
                   f"{sel.dataset} v{sel.version}; showing the default instead.")
        del st.session_state["sel_comp_field"]
    field = st.selectbox("metadata field", keys,
                         index=keys.index("family") if "family" in keys else 0,
                         key="sel_comp_field")
    rows = ui.read(browse_selections.selection_composition, sel.selection_id, field)
    st.caption(f"{field} of the selection's pool: selected against not selected")
    composition_chart(rows, field, "sel_comp_chart")
    st.dataframe(composition_table(rows), key="sel_comp_table", hide_index=True,
                 column_config={"share selected": st.column_config.NumberColumn(
                     format="percent")})


def scores_view(sel) -> None:
    options = ui.read(browse_scores.selection_score_options, sel.selection_id)
    name = st.selectbox("score", options, key="sel_score")
    groups = ui.read(browse_scores.selection_score_values, sel.selection_id, name)
    n_sel, n_not = len(groups["selected"]), len(groups["not selected"])
    c1, c2, c3 = st.columns(3)
    c1.metric("selected: mean", "-" if not n_sel else f"{groups['selected'].mean():.4g}",
              help=f"{ui.plural(n_sel, 'sample')} with this score")
    c2.metric("not selected: mean",
              "-" if not n_not else f"{groups['not selected'].mean():.4g}",
              help=f"{ui.plural(n_not, 'sample')} with this score")
    c3.metric("samples with a value", f"{n_sel + n_not:,}")
    hist = browse_scores.histogram(groups)
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
    first = ui.read(browse_scores.samples_in_score_range, sel.selection_id, name, *rng, 1, 0)
    total = first["n_total"]
    st.markdown(f"**{ui.plural(total, 'sample')}** with {name} in [{rng[0]:.4g}, {rng[1]:.4g}], "
                f"**{first['n_selected']:,}** of them selected")
    if not total:
        return
    limit, offset = ui.pager(total, "sel_range")
    rows = ui.read(browse_scores.samples_in_score_range, sel.selection_id, name, *rng, limit,
                   offset)["rows"]
    st.dataframe(numbered(rows), hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large"),
                                "pick": PICK_COLUMN,
                                "value": st.column_config.NumberColumn(name, format="%.5g")})
    if rows:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        labels = {r["sample_id"]: f"{r['value']:.4g} · "
                  f"{pick_label(r['rank']) if r['selected'] else 'not selected'} · "
                  f"{r['prompt'][:60]}" for r in rows}
        pick = c1.selectbox("sample", list(labels), key="sel_range_pick",
                            format_func=labels.__getitem__)
        c2.button("Open sample", key="sel_range_open", on_click=open_sample, args=(pick,))


def map_view(sel) -> None:
    # offer only counts below the pool's size, and the whole pool
    steps = [n for n in (500, 1000, 2000, 3000, 5000) if n < sel.n_pool]
    options = [*steps, min(sel.n_pool, 5000)] if sel.n_pool > 0 else [0]
    if st.session_state.get("sel_map_points") not in options:
        st.session_state["sel_map_points"] = options[-1] if len(options) < 3 else 2000
    points = st.select_slider("points shown (at most)", options, key="sel_map_points",
                              format_func=lambda n: f"{n:,}" + (" (all)" if n == sel.n_pool
                                                                 else ""))
    data = ui.read(browse_scores.embedding_map, sel.selection_id, points)
    if not data["points"]:
        st.info("No stored embeddings cover this selection's pool "
                "(`curator score` computes them).")
        return
    st.caption(f"PCA of {data['n_shown']:,} of {data['n_pool']:,} pool embeddings "
               f"(embedder `{data['embedder'][:40]}`)")
    point = alt.selection_point(fields=["sample_id"], name="point", on="click")
    chart = alt.Chart(pd.DataFrame(data["points"])).mark_circle(size=40, opacity=0.75).encode(
        x=alt.X("x:Q", title="PC 1"), y=alt.Y("y:Q", title="PC 2"),
        color=alt.Color("selection:N", scale=alt.Scale(domain=["selected", "not selected"],
                                                       range=["#e4572e", "#9fb3c8"])),
        tooltip=["sample_id", "selection", "prompt"]).add_params(point)
    st.altair_chart(chart, key="sel_map_chart", selection_mode="point", on_select=map_clicked)
    st.caption("Click a point to open its sample.")


def map_clicked() -> None:
    """Chart callback: a clicked point opens its sample."""
    event = st.session_state.get("sel_map_chart") or {}
    picked = (event.get("selection") or {}).get("point") or []
    if picked and picked[0].get("sample_id"):
        open_sample(picked[0]["sample_id"])


WHY_COLUMNS = {
    "dataset": st.column_config.TextColumn("dataset", width="small"),
    "sample_id": st.column_config.TextColumn("id", width="small"),
    "drop %": st.column_config.NumberColumn(
        "loss drop (%)", format="%.3g", help="how much lower the model's loss on this answer "
        "is when the example is shown first: (d(i) - d(i | j)) / d(i)"),
    "drop": st.column_config.NumberColumn(
        "d(i) - d(i|j)", format="%.3g", help="the stored utility of the pair: the loss on the "
        "answer alone, less the loss with the example shown first"),
    "coverage": st.column_config.NumberColumn(
        format="%.3f", help="what this pair adds to the set function: the similarity, "
        "capped (FLMI) or less what the previous data covers (FLCG)"),
    "similarity": st.column_config.NumberColumn(
        "kernel", format="%.3f", help="the utility divided by the kernel's largest one "
        "(0 to 1): what greedy maximised"),
    "covered before": st.column_config.NumberColumn(
        format="%.3f", help="how well the previous selection's samples already cover the row"),
    "text": st.column_config.TextColumn("prompt → response", width="large"),
}


def why_table(rows: list[dict], key: str) -> None:
    ids = [r["sample_id"] for r in rows]
    st.dataframe(rows, key=key, hide_index=True, selection_mode="single-row",
                 on_select=functools.partial(opened_row, key, ids),
                 column_config=WHY_COLUMNS)


def why_selected(sel, sample_id: str, member) -> None:
    why = ui.explain_sample(sel.selection_id, sample_id, member)
    st.markdown("#### Why selected")
    if why is None:
        st.caption(f"{sel.method} does not pick from pairwise utilities: no coverage to "
                   "explain (see the gradient scores below for gradient methods).")
        return
    k = why["kernels"]
    effect = why["effect"]
    st.markdown(f"**{effect['sentence']}**")
    share = objective_share(member["gain"] if member else None, sel.objective)
    st.caption(f"{why['summary']}"
               + (f"; {percent(share)} of the selection's objective" if share is not None
                  else "")
               + f" ({k.function} over the selection's own {len(k.pool):,}-sample pool"
               + (f" and {len(k.rows):,} targets of {k.rows_dataset}"
                  if k.rows_word == "targets" else "") + ")")
    with st.expander("How is this computed", expanded=False):
        st.markdown(HOW_COMPUTED)
    # one table under the other: each row's text needs the width
    st.markdown(f"**{k.rows_word.capitalize()} it helps most** (click a row to open it)")
    if why["covers"]:
        why_table(why["covers"], "sel_sample_covers")
    else:
        st.caption("none")
    if k.helped is not None:
        st.markdown("**Pool samples that cover it best**")
        if why["helped"]:
            why_table(why["helped"], "sel_sample_helped")
        else:
            st.caption("none")
    elif k.note:
        st.caption(k.note)


def sample_metadata(sel, detail: dict) -> None:
    """The sample's metadata in the version the selection was made from (else the first
    version that has it)."""
    versions = detail["versions"]
    mine = [v for v in versions if (v["dataset"], v["version"]) == (sel.dataset, sel.version)]
    meta = (mine or versions or [{"metadata": {}}])[0]["metadata"]
    st.markdown("**Metadata**")
    if meta:
        st.dataframe([{"field": k, "value": json.dumps(v) if not isinstance(v, str) else v}
                      for k, v in meta.items()], key="sel_sample_meta", hide_index=True,
                     column_config={"value": st.column_config.TextColumn(width="large")})
    else:
        st.caption("none")


def sample_view(sel) -> None:
    first = ui.read(browse_selections.member_page, sel.selection_id, 1, 0)
    default = first[0]["sample_id"] if first else ""
    if not st.session_state.get("sel_sample_id"):
        st.session_state["sel_sample_id"] = default
    member = ui.read(browse_selections.member_rank, sel.selection_id,
                     st.session_state["sel_sample_id"].strip())
    c0, c1, c2 = st.columns([5, 1, 1], vertical_alignment="bottom")
    sample_id = c0.text_input("sample id", key="sel_sample_id",
                              help="open one from the Members view, or paste an id").strip()
    rank = member["rank"] if member else None
    c1.button("← previous", key="sel_prev", help="the pick before this one (key: ←)",
              disabled=not rank, shortcut="Left",
              on_click=step_sample, args=(sel.selection_id, (rank or 0) - 1))
    c2.button("next →", key="sel_next", help="the pick after this one (key: →)",
              disabled=rank is None or rank + 1 >= sel.n_selected, shortcut="Right",
              on_click=step_sample, args=(sel.selection_id, (rank or 0) + 1))
    detail = ui.read(browse_versions.sample_detail, sample_id) if sample_id else None
    if detail is None:
        st.warning(f"No sample {sample_id!r} in the store.")
        return
    gains = sel.method in KERNEL_METHODS
    zero = gains and bool(member) and member["gain"] == 0
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("in this selection", "yes" if member else "no")
    c2.metric("pick", "-" if not member else pick_label(member["rank"]),
              help="pick order: #1 was picked first")
    c3.metric("marginal gain", "-" if not member or member["gain"] is None or not gains
              else "0" if zero else f"{member['gain']:.5f}",
              help="zero-gain pick" if zero else "how much the pick raised the objective")
    c4.metric("characters", f"{detail['chars']:,}")
    if zero:
        st.info(f"A zero-gain pick: {ZERO_GAIN_WHY}.", icon=":material/exposure_zero:")
    for m in detail["messages"]:
        with st.chat_message("user" if m["role"] == "user" else "assistant"
                             if m["role"] == "assistant" else "ai"):
            st.markdown(f"**{m['role']}**")
            st.text(m["content"])
    sample_metadata(sel, detail)
    quality_signals(sel, sample_id)
    why_selected(sel, sample_id, member)
    grads = ui.read(browse_scores.sample_gradient_scores, sample_id)
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
    sels = ui.read(selection_rows.list_selections)
    others = [s.selection_id for s in sels if s.selection_id != sel.selection_id]
    if not others:
        st.info("Only one selection so far: nothing to compare with.")
        return
    other = ui.pick_selection("sel_other", "compare with",
                              only=others).selection_id
    o = ui.read(browse_selections.selection_overlap, sel.selection_id, other)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("in both", f"{o['both']:,}")
    c2.metric(f"only in {sel.selection_id}", f"{o['only_a']:,}")
    c3.metric(f"only in {other}", f"{o['only_b']:,}")
    c4.metric("Jaccard", f"{o['both'] / max(1, o['union']):.2f}")
    left, right = st.columns(2)
    for col, a, b, side in ((left, sel.selection_id, other, "a"),
                            (right, other, sel.selection_id, "b")):
        col.markdown(f"**What {a} adds** (first 50, pick order)")
        col.dataframe(numbered(ui.read(browse_selections.selection_only, a, b, 50, 0)),
                      key=f"sel_only_{side}", hide_index=True, column_config={"pick": PICK_COLUMN})
    keys = sorted(set(ui.read(browse_selections.selection_metadata_keys, sel.selection_id))
                  & set(ui.read(browse_selections.selection_metadata_keys, other)))
    if keys:
        field = st.selectbox("composition by metadata field", keys,
                             index=keys.index("family") if "family" in keys else 0,
                             key="sel_cmp_field")
        for col, sid, side in ((left, sel.selection_id, "a"), (right, other, "b")):
            with col:
                st.markdown(f"**{sid}**: {field}, selected against not selected")
                composition_chart(ui.read(browse_selections.selection_composition, sid, field),
                                  field, f"sel_cmp_chart_{side}")


def apply_url(table: list[dict]) -> None:
    """A link's selection, view, sample, sort, search, filters and page become the widgets'
    state."""
    params = ui.url_params("selections", URL, lists=LISTS)
    ids = [r["selection_id"] for r in table]
    ui.url_choice(params, "selection", "sel_id", ids, "selection")
    ui.url_choice(params, "view", "sel_view", VIEWS, "view")
    ui.url_choice(params, "sort", "sel_sort", list(SORTS), "sort")
    ui.url_choice(params, "order", "sel_order", ["ascending", "descending"], "order")
    ui.url_choice(params, "other", "sel_other", ids, "selection to compare with")
    if "field" in params:
        st.session_state["sel_comp_field"] = params["field"]
    if "search" in params:
        st.session_state["sel_search"] = params["search"]
    if "where" in params:
        st.session_state["sel_where"] = list(params["where"])
    if "page" in params:
        ui.url_page(params["page"], "sel_members")
        st.session_state["_sel_page_from_url"] = True
    if "sample" in params:
        st.session_state["sel_sample_id"] = params["sample"]
        if "view" not in params:
            st.session_state["sel_view"] = "Sample"


def current_url(sel, view: str) -> dict:
    state = st.session_state
    out = {"selection": sel.selection_id, "view": view}
    if view == "Sample":
        out["sample"] = state.get("sel_sample_id")
    if view == "Members":
        out["sort"] = state.get("sel_sort", "rank")
        out["order"] = state.get("sel_order", "ascending")
        out["search"] = (state.get("sel_search") or "").strip()
        out["where"] = list(state.get("sel_where") or [])
        page = int(state.get("sel_members_page") or 1)
        out["page"] = page if page > 1 else None
    if view == "Composition":
        out["field"] = state.get("sel_comp_field")
    if view == "Compare":
        out["other"] = state.get("sel_other")
    return out


with ui.guard():
    ui.require_store()
    table = ui.read(browse_selections.selections_table)
    if not table:
        st.info("No selections yet: `curator select --dataset NAME --stage instruction` "
                "or `curator curate recipe.yaml` makes one.")
        st.stop()
    apply_url(table)
    with st.expander(f"all selections ({len(table)})", expanded=False):
        st.dataframe(table, key="sel_all_table", hide_index=True)
    sel = ui.pick_selection("sel_id")
    follow_selection(sel.selection_id)
    header(sel)
    view = st.radio("view", VIEWS, horizontal=True, key="sel_view",
                    label_visibility="collapsed")
    {"Members": members_view, "Composition": composition_view, "Scores": scores_view,
     "Map": map_view, "Sample": sample_view, "Compare": compare_view}[view](sel)
    ui.write_url("selections", current_url(sel, view))
