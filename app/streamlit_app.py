"""The app from a checkout, by Streamlit's convention: ``streamlit run app/streamlit_app.py``.

A thin entry: the app's code lives in the package (``curator/app/``), so ``curator app``
runs the same pages from an installed wheel. This file only makes the checkout's
``curator`` importable and runs the package's ``streamlit_app.py`` on every rerun.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
if (CHECKOUT / "curator").is_dir() and str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))

import curator.app  # noqa: E402  (after the checkout is on sys.path)

runpy.run_path(str(Path(curator.app.__file__).resolve().parent / "streamlit_app.py"),
               run_name="__main__")
