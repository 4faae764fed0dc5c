"""curator's Streamlit app: thin pages over the library (no SQL here).

Run it with ``curator app [--store PATH] [--port N] [--host ADDR]``; it reads the store
named by ``CURATOR_STORE``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # the pages import curator_ui from here
    sys.path.insert(0, str(APP_DIR))

# An emoji favicon is drawn in the browser (a data: URL); a ":material/...:" one is fetched
# from a font host, which fails offline.
st.set_page_config(page_title="curator", page_icon="🗂️", layout="wide")
pages = [
    st.Page(APP_DIR / "views" / "overview.py", title="Overview", icon=":material/home:",
            default=True, url_path="home"),
    st.Page(APP_DIR / "views" / "versions.py", title="Versions", icon=":material/table_rows:",
            url_path="versions"),
    st.Page(APP_DIR / "views" / "selections.py", title="Selections", icon=":material/checklist:",
            url_path="selections"),
    st.Page(APP_DIR / "views" / "masks.py", title="Masks", icon=":material/grid_on:", url_path="masks"),
    st.Page(APP_DIR / "views" / "export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page(APP_DIR / "views" / "schedules.py", title="Schedules", icon=":material/schedule:",
            url_path="schedules"),
]
# "/" shows the Overview; "/overview" (its name in the menu, an old link) goes there too
# (the default page has no path of its own, so without this it is "Page not found").
pages.append(st.Page(lambda: st.switch_page(pages[0]), title="Overview",
                     url_path="overview", visibility="hidden"))
st.navigation(pages).run()
