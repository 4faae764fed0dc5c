"""Every environment variable curator reads, in one place, each validated by one function
with a one-line error naming the variable (``EnvError``). ``docs/environment.md`` is the
table for users; ``VARIABLES`` is the same list, and a test keeps the two in step.

The CLI checks them all once when a command starts (``check_all``), so a bad value stops
the command before it does anything; the library reads them where they are used, through
the same functions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


class EnvError(ValueError):
    """An environment variable has a value curator cannot use (message names it)."""


# name -> (default, what it sets); the defaults as shown to users.
VARIABLES: dict[str, tuple[str, str]] = {
    "CURATOR_STORE": ("curator-store", "the store folder (the same as --store)"),
    "CURATOR_LOCK_TIMEOUT": ("60", "seconds a command waits for a busy store"),
    "CURATOR_APP_LOCK_TIMEOUT": ("5", "seconds an app page waits for a busy store"),
    "CURATOR_CACHE": ("~/.cache/curator", "cache folder: the converted default model, "
                                          "model file checksums"),
    "CURATOR_RAY_TIMEOUT": ("30", "seconds to reach a Ray cluster before giving up"),
    "RAY_ADDRESS": ("(none: a local Ray)", "the Ray cluster of --engine ray "
                                           "(the same as --ray-address)"),
    "HF_HUB_OFFLINE": ("(unset)", "set: hub dataset names are not fetched"),
    "HF_DATASETS_OFFLINE": ("(unset)", "set: the same as HF_HUB_OFFLINE"),
}


def seconds(name: str, default: float) -> float:
    """A non-negative, finite number of seconds from ``name`` (``default`` when unset or
    empty)."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise EnvError(f"{name} must be a non-negative number of seconds, got {text!r}")
    return value


def folder(name: str, default: Path) -> Path:
    """A folder from ``name`` (``default`` when unset or empty): it may not exist yet, but
    neither it nor a folder above it may be a file."""
    text = os.environ.get(name)
    path = default if text is None or not text.strip() else Path(text).expanduser()
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            shown = "it" if p == path else str(p)
            raise EnvError(f"{name} must name a folder, but {shown} is a file ({path})")
        if p.is_dir():
            break
    return path


def cache_root() -> Path:
    return folder("CURATOR_CACHE", Path.home() / ".cache" / "curator")


def lock_timeout(default: float = 60.0) -> float:
    return seconds("CURATOR_LOCK_TIMEOUT", default)


def app_lock_timeout() -> float:
    return seconds("CURATOR_APP_LOCK_TIMEOUT", 5.0)


def ray_timeout() -> float:
    return seconds("CURATOR_RAY_TIMEOUT", 30.0)


def check_all() -> None:
    """Validate every variable curator reads (EnvError for the first bad one)."""
    lock_timeout()
    app_lock_timeout()
    ray_timeout()
    cache_root()
