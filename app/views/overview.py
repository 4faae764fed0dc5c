"""Overview: datasets, their versions, recent runs."""

from __future__ import annotations

import os

import streamlit as st

from curator.store import Store, StoreError
from curator.store.datasets import list_datasets, list_versions

store_path = os.environ.get("CURATOR_STORE", "curator-store")
st.title("curator")
st.caption(f"store: {store_path}")
store = Store(store_path)
if not store.exists:
    st.info("This store is empty. Create one and ingest data:\n\n"
            "```\ncurator ingest data.jsonl --dataset mydata --store " + store_path + "\n```\n"
            "or run `make demo` for the sample data.")
    st.stop()
try:
    datasets = list_datasets(store)
    if not datasets:
        st.info("No datasets yet: `curator ingest FILE --dataset NAME`.")
    for d in datasets:
        st.subheader(d["name"])
        rows = [{"version": v.version, "mode": v.mode, "members": v.n_members,
                 "added": v.n_added, "removed": v.n_removed, "duplicates": v.n_duplicates,
                 "quarantined": v.n_quarantined, "created": v.created_at, "source": v.source}
                for v in list_versions(store, d["name"])]
        st.dataframe(rows, key=f"versions-{d['name']}", hide_index=True)
    st.subheader("Recent runs")
    st.dataframe(store.runs(limit=20), key="runs", hide_index=True)
except StoreError as exc:
    st.warning(f"The store is busy or unreadable right now: {exc}. Reload in a moment.")
