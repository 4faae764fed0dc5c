"""Fixtures for the app tests: one demo store built with the real pipeline and a tiny model.

The store takes a few minutes to build on a busy machine, so it is built once per state of
the code that builds it (a hash of curator/, sample_data/ and this file, so uncommitted edits
count) and cached under the temp folder; building one removes the copies older code left
there more than an hour ago. ``CURATOR_APP_FIXTURE`` points at a ready store instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP_FILE = REPO / "curator" / "app" / "streamlit_app.py"


FIXTURE_PREFIX = "curator-app-fixture-"


def _code_key() -> str:
    """12 hex digits of a hash over the files the fixture store is built from."""
    digest = hashlib.sha256()
    files = [*sorted((REPO / "curator").rglob("*.py")),
             *sorted(p for p in (REPO / "sample_data").iterdir() if p.is_file()),
             Path(__file__).resolve()]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def build_fixture_store(root: Path) -> Path:
    """The demo (three versions, a target set, four selections with utilities, embeddings
    and a DualSFT mask) plus one GAST selection with per-layer subsets, under ``root``."""
    from curator.config import ScoringOptions, StageSpec
    from curator.demo import run_demo
    from curator.stages import select_stage
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
    base = Path(tempfile.gettempdir()) / f"{FIXTURE_PREFIX}{_code_key()}"
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
        # Stores of earlier code; one built within the hour may be another checkout's,
        # in use by a test run beside this one.
        for old in base.parent.glob(f"{FIXTURE_PREFIX}*"):
            if (old != base and ".building-" not in old.name
                    and time.time() - old.stat().st_mtime > 3600):
                shutil.rmtree(old, ignore_errors=True)
    return base / "store"


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a local TCP port nothing listens on now (for `curator app`)."""
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return port


@pytest.fixture(scope="session")
def demo_store_path() -> Path:
    return fixture_store_path()


@pytest.fixture
def demo_store(demo_store_path, tmp_path) -> Path:
    """A private copy of the fixture store (tests that write, e.g. exports, use this)."""
    target = tmp_path / "store"
    shutil.copytree(demo_store_path, target)
    return target
