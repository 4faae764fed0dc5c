"""The Streamlit app, shipped inside the package so `curator app` finds it after a wheel
install. Its pages are scripts run by Streamlit (``streamlit_app.py``), not imported."""
