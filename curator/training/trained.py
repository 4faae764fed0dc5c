"""Saving what `curator train` made (a full model or LoRA adapters) by the rule every folder
curator replaces follows (``curator.folders``): written into a temporary folder beside
``--out`` with a manifest of every file's sha256, renamed into place, a previous output
moved aside and removed only once the new one is there. So ``--force`` never mixes an old
adapter with a new model, never replaces a folder it did not write or one somebody changed,
and a kill leaves the old output or the new one.

``train`` runs without a store, so the folder carries its writer (``PARTIAL``: host, pid,
process start) until it is in place; the next ``train`` into the same ``--out`` puts back
or removes what a dead writer left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from curator.folders import (
    MANIFEST,
    PARTIAL,
    check_target,
    clean_leftovers,
    file_mode,
    replace_refusal,
    swap_into_place,
    temp_folder,
    write_manifest,
)
from curator.store.recovery import host_name, process_alive, process_start


def check_out(out: str | Path, force: bool) -> Path:
    """The output folder, absolute (FolderRefused, a ValueError, with the reason when
    ``train`` may not write it). Called before training, and again before saving."""
    return check_target(out, force=force, kind="train")


def save_trained(model: Any, tokenizer: Any, out: str | Path, force: bool,
                 info: dict[str, Any]) -> Path:
    """Save ``model`` (``save_pretrained``: full weights, or the adapter of a peft model)
    and ``tokenizer`` into ``out`` with a manifest holding ``info``; returns the folder."""
    from curator import __version__

    out = check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_writes(out)
    tmp = temp_folder(out)
    tmp.mkdir(mode=0o777)  # less the umask, as for any folder the user makes
    try:
        pid = os.getpid()
        (tmp / PARTIAL).write_text(f"{host_name()} {pid} {process_start(pid) or ''}\n")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        written = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != PARTIAL)
        mode = file_mode()
        for p in written:  # safetensors writes 0600; the rest of the folder follows the umask
            p.chmod(mode)
        manifest = {"curator_version": __version__, "kind": "train",
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        write_manifest(tmp, manifest, written)
        (tmp / MANIFEST).chmod(mode)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (out / PARTIAL).unlink()  # complete: the marker goes last
    return out


def clean_dead_writes(out: Path) -> None:
    """Temporary folders beside ``out`` whose writer (PARTIAL) is a dead process of this
    host, and a previous output a dead write moved aside (``.old``), put back or removed
    (curator.folders.clean_leftovers)."""
    host = host_name()
    for tmp in out.parent.glob(f".{out.name}.????????"):
        owner = _owner(tmp)
        if owner and owner[0] == host and not process_alive(owner[1], owner[2]):
            clean_leftovers(tmp, out)
        elif owner is None and tmp.is_dir() and not tmp.is_symlink():
            # Killed between making the folder and writing its marker: nothing in it to
            # lose (rmdir removes only an empty folder).
            with contextlib.suppress(OSError):
                tmp.rmdir()
    owner = _owner(out)
    if owner and owner[0] == host and not process_alive(owner[1], owner[2]):
        # Killed after the new output was renamed into place: finish what it did not.
        for old in out.parent.glob(f".{out.name}.????????.old"):
            if replace_refusal(old, "train") is None:
                shutil.rmtree(old, ignore_errors=True)
        (out / PARTIAL).unlink(missing_ok=True)


def _owner(tmp: Path) -> tuple[str, int, str | None] | None:
    try:
        host, pid, *start = (tmp / PARTIAL).read_text().split()
        return host, int(pid), (start[0] if start else None)
    except (OSError, ValueError):
        return None
