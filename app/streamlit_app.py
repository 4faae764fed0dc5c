"""curator's Streamlit app: thin pages over the library (no SQL here)."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="curator", layout="wide")
pages = [
    st.Page("views/overview.py", title="Overview", default=True),
]
st.navigation(pages).run()
