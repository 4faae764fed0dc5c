"""Export folders for the app's Export page: every export below a destination folder
(the app's own ``<selection>-<format>`` folders and a schedule's ``NAME/<run>/`` folders),
the next free name there, and a write into it. Nothing here removes anything.

Where an export may go is decided by the function ``curator export`` uses
(``curator.folders.check_target``); a refusal is an ExportError with the one-line reason
and nothing is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from curator.folders import FolderRefused, check_target
from curator.outputs.subsets import ExportError, export_selection
from curator.store import Store
from curator.store.selection_rows import get_selection

MAX_DEPTH = 2  # <dest>/<export>/ and <dest>/<schedule>/<run>/


def list_exports(root: Path) -> list[dict[str, Any]]:
    """Every folder with a manifest below ``root`` (at most two levels down), newest
    first. Links (a schedule's ``latest``) and hidden work folders are not followed."""
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:  # unreadable: nothing to list there (not "the store is busy")
            return
        for p in entries:
            if p.name.startswith(".") or p.is_symlink() or not p.is_dir():
                continue
            manifest = p / "manifest.json"
            if manifest.is_file():
                try:
                    m = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    continue
                rel = p.relative_to(root)
                out.append({"folder": str(rel),
                            "schedule": rel.parts[0] if len(rel.parts) > 1 else "",
                            "selection": (m.get("selection") or {}).get("selection_id"),
                            "format": m.get("format"), "rows": m.get("n_rows"),
                            "mask": bool(m.get("mask")), "created": m.get("created_at")})
            elif depth < MAX_DEPTH:
                walk(p, depth + 1)

    walk(root, 1)
    out.sort(key=lambda r: (str(r["created"] or ""), r["folder"]), reverse=True)
    return out


def free_name(root: Path, selection_id: str, fmt: str) -> str:
    """``<selection>-<format>`` in ``root``, with ``-2``, ``-3``... when taken."""
    base = f"{selection_id}-{fmt}"
    name, n = base, 1
    while (root / name).exists() or (root / name).is_symlink():
        n += 1
        name = f"{base}-{n}"
    return name


def destination(text: str) -> Path:
    """The destination folder a user typed, absolute (``~`` expanded; a relative path is
    taken from the server's working folder, so the page shows the absolute one)."""
    return Path(os.path.abspath(Path(text.strip() or ".").expanduser()))


def next_export(store: Store, selection_id: str, fmt: str, root: Path) -> Path:
    """The folder the next export into ``root`` goes to; ExportError with the reason
    when the CLI would refuse it (a file, an unwritable folder, the store's own folder,
    inside an existing export)."""
    root = destination(str(root))
    if root.exists() and not root.is_dir():
        raise ExportError(f"{root} is a file, not a folder")
    try:
        return check_target(root / free_name(root, selection_id, fmt), force=False,
                            protected=store.path)
    except FolderRefused as exc:
        raise ExportError(str(exc)) from exc


def write_export(store: Store, selection_id: str, fmt: str, root: Path) -> Path:
    """Write the export into ``root/<free name>`` (a new folder; ``root`` is created when
    missing); returns its folder. ExportError with the reason, nothing written, when the
    destination is refused (see next_export) or the write fails."""
    get_selection(store, selection_id)
    out = next_export(store, selection_id, fmt, root)
    try:
        return export_selection(store, selection_id, out, fmt=fmt).path
    except OSError as exc:  # the disk, not the store: say so, not "the store is busy"
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from exc
