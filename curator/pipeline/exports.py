"""Exports as a zip in memory, and the store's ``exports/`` folder (``curator.outputs.subsets``
writes each export; ``curator.app.exporting`` lists and names them)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from curator.outputs.subsets import export_selection
from curator.store import Store


def exports_dir(store: Store) -> Path:
    return Path(store.path) / "exports"


def export_zip(store: Store, selection_id: str, fmt: str) -> tuple[str, bytes]:
    """The export (subset, mask, manifest) as a zip in memory; nothing stays on disk."""
    with tempfile.TemporaryDirectory(prefix="curator-export-") as tmp:
        name = f"{selection_id}-{fmt}"
        res = export_selection(store, selection_id, Path(tmp) / name, fmt=fmt)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(res.path.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{name}/{f.relative_to(res.path)}")
    return f"{name}.zip", buf.getvalue()
