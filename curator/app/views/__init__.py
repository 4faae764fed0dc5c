"""The app's pages: scripts Streamlit runs (see ``curator/app/streamlit_app.py``)."""
