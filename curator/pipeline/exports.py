"""Exports the app writes: into the store's ``exports/`` folder under a free name, or as a
zip in memory; and the export folders already there (``curator.export`` writes each)."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from curator.export import export_selection
from curator.store import Store
from curator.store.selections import get_selection


def exports_dir(store: Store) -> Path:
    return Path(store.path) / "exports"


def list_export_folders(store: Store) -> list[dict[str, Any]]:
    """Export folders in the store's ``exports/`` (those with a manifest)."""
    root = exports_dir(store)
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        manifest = p / "manifest.json"
        if p.is_dir() and manifest.exists():
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            out.append({"folder": p.name, "selection": m.get("selection", {}).get(
                "selection_id"), "format": m.get("format"), "rows": m.get("n_rows"),
                "mask": bool(m.get("mask")), "created": m.get("created_at")})
    return out


def free_export_name(store: Store, selection_id: str, fmt: str) -> str:
    """``<selection>-<format>``, with ``-2``, ``-3``... when taken."""
    root = exports_dir(store)
    base = f"{selection_id}-{fmt}"
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def export_to_store(store: Store, selection_id: str, fmt: str) -> Path:
    """Write the export into ``<store>/exports/<free name>``; returns its folder."""
    get_selection(store, selection_id)
    out = exports_dir(store) / free_export_name(store, selection_id, fmt)
    return export_selection(store, selection_id, out, fmt=fmt).path


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
