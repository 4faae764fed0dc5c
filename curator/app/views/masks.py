"""Masks: a DualSFT mask's density by layer and module kind, and per-layer subset sizes of
layer-wise (GAST) selections."""

from __future__ import annotations

import altair as alt
import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.store import browse_masks, selection_rows

st.title("Masks")


def mask_section() -> None:
    masks = ui.read(browse_masks.list_masks)
    st.subheader("Parameter masks")
    if not masks:
        st.info("No masks yet: a DualSFT stage (`--method dualsft`) or "
                "`curator mask SELECTION` makes one.")
        return
    st.dataframe(masks, key="mask_table", hide_index=True,
                 column_config={"density": st.column_config.NumberColumn(format="percent")})
    sel = ui.pick_selection("mask_sel", "mask of selection",
                            only=[m["selection_id"] for m in masks])
    rec = ui.read(selection_rows.get_mask_record, sel.selection_id)
    info = rec["info"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("density (whole model)", f"{rec['density']:.2%}")
    c2.metric("kept parameters", f"{rec['n_kept']:,}")
    c3.metric("model parameters", f"{rec['n_params']:,}")
    scope = info.get("scope_density")
    c4.metric("density (masked scope)", "-" if scope is None else f"{scope:.2%}")
    cells = ui.mask_heatmap(sel.selection_id, rec["sha256"])
    if not cells:
        return
    df = pd.DataFrame(cells)
    layers = sorted(df["layer"].unique(), key=_layer_key)
    base = alt.Chart(df).encode(
        x=alt.X("kind:N", title="module kind"),
        y=alt.Y("layer:N", sort=layers, title="layer"))
    heat = base.mark_rect().encode(
        color=alt.Color("density:Q", scale=alt.Scale(scheme="oranges"), title="density"),
        tooltip=["layer", "kind", alt.Tooltip("density:Q", format=".2%"), "kept", "params"])
    text = base.mark_text(fontSize=11).encode(text=alt.Text("density:Q", format=".1%"))
    st.caption("share of each (layer, module kind) block the mask lets fine-tuning change")
    st.altair_chart(heat + text, key="mask_heatmap_chart",
                    height=max(180, 34 * len(layers) + 120))
    left, right = st.columns(2)
    for col, name, title in ((left, "per_layer", "layer"), (right, "per_kind", "module kind")):
        part = info.get(name) or {}
        rows = [{title: k, "density": v["density"], "kept": v["selected"], "params": v["total"]}
                for k, v in part.items()]
        if rows:
            col.dataframe(rows, key=f"mask_{name}", hide_index=True,
                          column_config={"density": st.column_config.NumberColumn(
                              format="percent")})


def _layer_key(name: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in name.replace(".", " ").split())


def layers_section() -> None:
    st.subheader("Layer-wise subsets")
    ids = ui.read(browse_masks.layered_selections)
    if not ids:
        st.info("No layer-wise selections yet: a GAST stage (`--method gast`) gives each "
                "layer its own subset.")
        return
    sel = ui.pick_selection("mask_layer_sel", "layer-wise selection", only=ids)
    sizes = ui.read(browse_masks.layer_subset_sizes, sel.selection_id)
    c1, c2, c3 = st.columns(3)
    c1.metric("layers", f"{len(sizes):,}")
    c2.metric("samples trained on (any layer)", f"{sel.n_selected:,}")
    c3.metric("samples per layer", "-" if not sizes else
              f"{min(r['samples'] for r in sizes):,}–{max(r['samples'] for r in sizes):,}")
    df = pd.DataFrame(sizes)
    st.altair_chart(alt.Chart(df).mark_bar().encode(
        x=alt.X("layer:N", sort=[r["layer"] for r in sizes]), y="samples:Q",
        tooltip=["layer", "samples"]), key="mask_layer_chart", height=240)
    overlap = ui.read(browse_masks.layer_overlap, sel.selection_id)
    if overlap:
        order = [r["layer"] for r in sizes]
        st.caption("overlap of the layers' subsets (Jaccard)")
        st.altair_chart(alt.Chart(pd.DataFrame(overlap)).mark_rect().encode(
            x=alt.X("layer_a:N", sort=order, title=None),
            y=alt.Y("layer_b:N", sort=order, title=None),
            color=alt.Color("jaccard:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])),
            tooltip=["layer_a", "layer_b", alt.Tooltip("jaccard:Q", format=".2f")]
        ), key="mask_overlap_chart", height=max(180, 34 * len(order) + 120))


with ui.guard():
    ui.require_store()
    mask_section()
    layers_section()
