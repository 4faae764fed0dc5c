"""Export: pick a selection and a format; download the subset, mask and manifest as a zip,
or write them into a folder (the store's exports folder unless another is named), and list
every export there, a schedule's included."""

from __future__ import annotations

import curator_ui as ui
import streamlit as st

from curator.app import exporting
from curator.outputs.subsets import FORMATS, ExportError
from curator.pipeline import exports
from curator.store import browse_masks, selection_rows

st.title("Export")

FORMAT_HELP = {
    "jsonl": "one JSON object per sample: id, messages, prompt, response, metadata",
    "messages": "OpenAI-style {messages: [...]}",
    "alpaca": "instruction / input / output",
    "sharegpt": "conversations with from/value turns",
    "parquet": "one Parquet file",
    "hf": "a saved Hugging Face dataset (load_from_disk)",
}

with ui.guard():
    store = ui.require_store()
    sel = ui.pick_selection("exp_sel")
    if sel is None:
        st.info("No selections yet: nothing to export.")
        st.stop()
    # the names alone in the box, so typing "messages" finds messages (jsonl's help text
    # mentions messages too); the chosen format's help below it
    fmt = st.selectbox("format", FORMATS, key="exp_fmt")
    st.caption(FORMAT_HELP.get(fmt, ""))
    mask = ui.read(selection_rows.get_mask_record, sel.selection_id)
    layers = sel.selection_id in ui.read(browse_masks.layered_selections)
    parts = [f"**{ui.plural(sel.n_selected, 'sample')}** ({fmt})"]
    if mask:
        parts.append(f"a parameter mask ({mask['density']:.2%} of the model)")
    if layers:
        parts.append("per-layer subsets (layers.json)")
    parts.append("a manifest with sample ids, config, model fingerprint and checksums")
    st.markdown("The export holds " + ", ".join(parts) + ".")

    left, right = st.columns(2)
    with left:
        st.markdown("**Download**")
        if st.button("Prepare zip", key="exp_prepare"):
            with st.spinner("writing the export"):
                name, data = exports.export_zip(store, sel.selection_id, fmt)
            st.session_state["exp_zip"] = (sel.selection_id, fmt, name, data)
        ready = st.session_state.get("exp_zip")
        if ready and ready[:2] == (sel.selection_id, fmt):
            st.download_button(f"Download {ready[2]} ({len(ready[3]) / 1024:,.0f} KiB)",
                               data=ready[3], file_name=ready[2], mime="application/zip",
                               key="exp_download", type="primary")
    with right:
        st.markdown("**Write into a folder**")
        default = str(exports.exports_dir(store))
        if not st.session_state.get("exp_dest"):
            st.session_state["exp_dest"] = default
        dest = exporting.destination(st.text_input(
            "destination folder", key="exp_dest",
            help="a new folder is made inside it for each export; nothing there is replaced; "
                 "a relative path is taken from the folder the app runs in "
                 f"(default: the store's exports folder, {default})"))
        try:
            target = exporting.next_export(store, sel.selection_id, fmt, dest)
        except ExportError as exc:  # the CLI's refusal, in one line; nothing is written
            target = None
            st.error(f"Cannot export here: {exc}", icon=":material/block:")
        else:
            st.caption(f"next export goes into `{target}`")
        if st.button("Write export", key="exp_write", disabled=target is None):
            try:
                with st.spinner("writing the export"):
                    path = exporting.write_export(store, sel.selection_id, fmt, dest)
            except ExportError as exc:
                st.session_state["exp_written"] = None
                st.error(f"Export refused: {exc}", icon=":material/block:")
            else:
                st.session_state["exp_written"] = str(path)
                st.rerun()  # the caption above names the next free folder now
        if st.session_state.get("exp_written"):
            st.success(f"written: `{st.session_state['exp_written']}`")

    st.subheader("Exports in the destination folder")
    folders = exporting.list_exports(dest)
    if folders:
        st.caption(f"in `{dest}`, newest first; a schedule's exports are `NAME/<run>/`")
        st.dataframe(folders, key="exp_folders", hide_index=True)
    else:
        st.caption(f"none yet in `{dest}`")
