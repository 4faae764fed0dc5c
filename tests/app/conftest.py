"""Fixtures for the app tests: one demo store built with the real pipeline and a tiny model.

The store takes a few minutes to build on a busy machine, so it is built once per git HEAD
and cached under the temp folder (``CURATOR_APP_FIXTURE`` points at a ready store instead).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP_FILE = REPO / "app" / "streamlit_app.py"


def _head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nohead"


def build_fixture_store(root: Path) -> Path:
    """The demo (three versions, a target set, four selections with utilities, embeddings
    and a DualSFT mask) plus one GAST selection with per-layer subsets, under ``root``."""
    from curator.config import ScoringOptions, StageSpec
    from curator.curate import select_stage
    from curator.demo import run_demo
    from curator.store import Store
    from curator.testing import tiny_loaded_model

    root.mkdir(parents=True, exist_ok=True)
    store = Store(root / "store")
    lm = tiny_loaded_model("llama")
    run_demo(store, model_loader=lambda: lm, export_dir=root / "demo-exports",
             echo=lambda _line: None)
    select_stage(store, "demo", StageSpec(stage="task", method="gast", budget="10%", version=1,
                                          target="demo-target"),
                 lm=lm, options=ScoringOptions(k=4, batch_size=16, max_length=256))
    return store.path


def fixture_store_path() -> Path:
    """A ready fixture store (built on first use for this HEAD; later calls reuse it)."""
    given = os.environ.get("CURATOR_APP_FIXTURE")
    if given:
        return Path(given)
    base = Path(tempfile.gettempdir()) / f"curator-app-fixture-{_head()}"
    if not (base / "READY").exists():
        # Built beside the final place and renamed into it: a crashed or concurrent build
        # never leaves a half-built store where the next session would take it.
        work = base.with_name(f"{base.name}.building-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        build_fixture_store(work)
        (work / "READY").write_text("ok\n")
        try:
            shutil.rmtree(base, ignore_errors=True)
            work.rename(base)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
            if not (base / "READY").exists():
                raise
    return base / "store"


@pytest.fixture(scope="session")
def demo_store_path() -> Path:
    return fixture_store_path()


@pytest.fixture
def demo_store(demo_store_path, tmp_path) -> Path:
    """A private copy of the fixture store (tests that write, e.g. exports, use this)."""
    target = tmp_path / "store"
    shutil.copytree(demo_store_path, target)
    return target
