"""Overview: the store at a glance, each dataset's versions as a timeline, recent runs."""

from __future__ import annotations

import curator_ui as ui
import pandas as pd
import streamlit as st

from curator.store import browse_overview
from curator.store import datasets as store_datasets

st.title("curator")
st.caption(f"store: `{ui.store_path()}`")

with ui.guard():
    ui.require_store()
    summary = ui.read(browse_overview.store_summary)
    cols = st.columns(6)
    for col, (label, key) in zip(cols, [("datasets", "datasets"), ("versions", "versions"),
                                        ("distinct samples", "samples"),
                                        ("selections", "selections"), ("masks", "masks"),
                                        ("running jobs", "running")], strict=True):
        col.metric(label, f"{summary[key]:,}")

    for d in ui.read(store_datasets.list_datasets):
        name = d["name"]
        st.subheader(f"{name}")
        versions = ui.read(store_datasets.list_versions, name)
        rows = [{"version": f"v{v.version}", "mode": v.mode, "members": v.n_members,
                 "added": v.n_added, "removed": v.n_removed, "duplicates": v.n_duplicates,
                 "quarantined": v.n_quarantined, "created": v.created_at,
                 "source": v.source} for v in versions]
        left, right = st.columns([2, 3])
        if len(rows) > 1 or (rows and rows[0]["added"] != rows[0]["members"]):
            chart = pd.DataFrame(rows).set_index("version")[
                ["added", "removed", "duplicates", "quarantined"]]
            left.bar_chart(chart, stack=False, height=220)
        else:
            left.caption(f"one version, {ui.plural(rows[0]['members'], 'sample')}" if rows
                         else "no versions yet")
        right.dataframe(rows, key=f"overview_versions_{name}", hide_index=True)

    st.subheader("Recent runs")
    runs = ui.read(browse_overview.recent_runs, 20)
    if runs:
        st.dataframe(runs, key="overview_runs", hide_index=True, placeholder="",
                     column_order=["run_id", "kind", "dataset", "status", "progress", "error",
                                   "started_at", "finished_at"],
                     column_config={"run_id": st.column_config.TextColumn("run"),
                                    "error": st.column_config.TextColumn(width="medium"),
                                    "started_at": st.column_config.DatetimeColumn(
                                        "started", format="YYYY-MM-DD HH:mm:ss"),
                                    "finished_at": st.column_config.DatetimeColumn(
                                        "finished", format="YYYY-MM-DD HH:mm:ss")})
    else:
        st.caption("no runs yet")
