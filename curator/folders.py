"""The one rule for every folder curator writes and may later replace: exports (from the
CLI, the app, `curate` and schedules) and `train` outputs (full models and LoRA adapters).

A folder is written as ``.NAME.XXXXXXXX`` beside ``NAME``, its ``manifest.json`` last
(every file's sha256 and the manifest's own digest), and renamed into place; a previous
folder is moved aside to ``.NAME.XXXXXXXX.old`` first and removed after. ``force`` replaces
only a folder curator wrote that nobody changed since: its manifest is curator's and
intact, every file in it is listed, and every listed file still has its sha256. Anything
else is refused with a one-line reason (:class:`FolderRefused`) and left as it was.

This module imports only ``curator.digests`` (``sha256_file``), so the store's crash recovery
can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from curator.digests import sha256_file

MANIFEST = "manifest.json"
# What an export writes (curator.outputs.subsets): a killed export's temporary folder holding
# anything else is not removed by the recovery.
EXPORT_NAMES = frozenset({"data.jsonl", "data.parquet", "hf", "mask.safetensors",
                          "layers.json", "layer_scores.json", "dataset_info.json", MANIFEST})
# The first file `train` writes into its temporary folder and the last it removes: a
# folder holding it is an unfinished curator write (host, pid and start of the writer).
PARTIAL = ".curator-partial"
# Files a system or file browser drops into any folder: not the user's work.
JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# The fields that make a manifest curator's, by what wrote the folder.
KINDS = {"export": {"curator_version", "selection", "files", "sample_ids"},
         "train": {"curator_version", "kind", "files"}}
NOUN = {"export": "a curator export", "train": "a model curator's train wrote"}
PREVIOUS = {"export": "a previous curator export", "train": "a previous `curator train` output"}


class FolderRefused(ValueError):
    """curator may not write or replace this folder (the message says why, in one line)."""


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field: an edited
    manifest (another sample list, another stage) no longer matches it."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any], written: list[Path]) -> dict:
    """Add ``files`` (each written file's sha256) and the digest, write ``manifest.json``
    into ``folder``; returns the manifest as a reader loads it."""
    manifest = dict(manifest, files={p.relative_to(folder).as_posix(): sha256_file(p)
                                     for p in sorted(written)})
    # Round-trip through JSON first so the digest covers exactly what a reader loads.
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False),
                                   encoding="utf-8")
    return manifest


def _kind_of(manifest: dict[str, Any]) -> str | None:
    if manifest.get("kind") == "train":
        return "train"
    return "export" if KINDS["export"] <= set(manifest) else None


def replace_refusal(path: Path, kind: str = "export") -> str | None:
    """Why ``path`` may not be replaced by a new folder of ``kind`` ("export", "train"), or
    None when it may: a folder curator wrote as that kind and nobody changed since."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"is not {NOUN[kind]} (no {MANIFEST})"
    except (OSError, ValueError):
        return f"has a {MANIFEST} that is not readable JSON"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict) \
            or not KINDS[kind] <= set(manifest):
        found = _kind_of(manifest) if isinstance(manifest, dict) else None
        if found and found != kind:
            return f"is {NOUN[found]}, not {NOUN[kind]}"
        return f"has a {MANIFEST} that curator did not write"
    if _kind_of(manifest) != kind:
        return f"is {NOUN[_kind_of(manifest) or 'export']}, not {NOUN[kind]}"
    digest = manifest.get("manifest_sha256")
    if digest is not None and digest != manifest_digest(manifest):
        return f"has a {MANIFEST} that was edited after curator wrote it"
    listed = manifest.get("files") or {}
    others, changed = [], []
    for f in sorted(path.rglob("*")):
        if f.is_dir() and not f.is_symlink():
            continue
        rel = f.relative_to(path).as_posix()
        if rel in (MANIFEST, PARTIAL) or (f.name in JUNK and rel not in listed):
            continue
        if rel not in listed:
            others.append(rel)
        elif f.is_symlink() or sha256_file(f) != listed[rel]:
            changed.append(rel)
    if others:
        return f"holds files curator did not write ({_some(others)})"
    if changed:
        return f"holds files changed since curator wrote them ({_some(changed)})"
    return None


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_target(given: str | Path, *, force: bool, kind: str = "export",
                 protected: Path | None = None) -> Path:
    """The folder to write, absolute; :class:`FolderRefused` with the reason when it may
    not be written. ``protected`` (the store's folder) and the folders holding it are never
    written. Without ``force`` the folder must not exist; with it, see replace_refusal."""
    given = Path(given).expanduser()
    if given.is_symlink():
        raise FolderRefused(f"{given} is a symbolic link; name a folder, not a link "
                            "(curator does not write or delete through links)")
    # Resolve the parent only: the last part is the name itself, not what it points to.
    out = Path(os.path.abspath(given))
    out = out.parent.resolve() / out.name
    what = "the export" if kind == "export" else "the trained model"
    if protected is not None:
        home = Path(protected).resolve()
        if out == home or out in home.parents:
            raise FolderRefused(f"{out} {'is' if out == home else 'holds'} the store {home}; "
                                f"choose another folder for {what}")
        if home in out.parents and home / "exports" not in (out, *out.parents):
            raise FolderRefused(f"{out} is inside the store's own folder {home}; choose "
                                f"another folder for {what} (or one in {home / 'exports'})")
    reason = _parent_refusal(out)
    if reason:
        raise FolderRefused(f"{reason}; choose another folder for {what}")
    if not out.exists():
        return out
    if not out.is_dir():
        raise FolderRefused(f"{out} exists and is not a folder")
    if not force:
        raise FolderRefused(f"{out} exists; pass --force to replace it")
    reason = replace_refusal(out, kind)
    if reason:
        raise FolderRefused(f"{out} {reason}; --force replaces only {PREVIOUS[kind]}")
    return out


def _parent_refusal(out: Path) -> str | None:
    """Why no folder may be made at ``out`` because of the folders above it: one of them is
    a file, is not writable, or is a folder curator wrote (an export inside an export would
    make the outer one fail its own manifest check)."""
    for above in out.parents:
        if (above / MANIFEST).is_file() and _read_kind(above):
            return f"{out} is inside {above}, which curator wrote ({_read_kind(above)})"
    above = out.parent
    while not above.exists() and not above.is_symlink() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"{above} is a file, not a folder"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"cannot write in {above} (permission denied)"
    return None


def temp_folder(out: Path) -> Path:
    """A fresh name beside ``out`` for writing it (not made here)."""
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"


def old_folder(tmp: Path) -> Path:
    """Where a replaced folder waits while the new one is renamed into place."""
    return tmp.with_name(tmp.name + ".old")


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; a previous folder there is moved aside to ``<tmp>.old``
    first and removed after (the name derives from ``tmp``, so a recovery after a kill
    between the two renames can put it back or finish removing it). A process working
    inside ``out`` (``--out .``) works in the new folder afterwards."""
    try:
        cwd = Path(os.getcwd())
    except OSError:
        cwd = None
    inside = cwd is not None and (cwd == out or out in cwd.parents)
    if out.exists():
        if inside:
            os.chdir(out.parent)
        old = old_folder(tmp)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        if inside:
            os.chdir(out)
    else:
        tmp.rename(out)


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def clean_leftovers(tmp: Path, out: Path) -> None:
    """What a killed write left: its temporary folder (removed only when it holds nothing
    but what an export writes, or is marked unfinished with PARTIAL), and a previous folder
    moved aside to ``<tmp>.old``, which goes back to ``out`` when the kill came between
    the two renames and is removed when the new folder is in place and it is unchanged."""
    if tmp.is_dir() and not tmp.is_symlink():
        names = {p.name for p in tmp.iterdir()}
        if names <= EXPORT_NAMES or PARTIAL in names:
            shutil.rmtree(tmp, ignore_errors=True)
    old = old_folder(tmp)
    if old.is_dir() and not old.is_symlink():
        if out.exists() or out.is_symlink():
            kind = "train" if (old / MANIFEST).is_file() and _read_kind(old) == "train" \
                else "export"
            if replace_refusal(old, kind) is None \
                    or {p.name for p in old.iterdir()} <= EXPORT_NAMES:
                shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                old.rename(out)
            except OSError:
                pass  # left for the user to see; nothing is lost


def _read_kind(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _kind_of(manifest) if isinstance(manifest, dict) else None
