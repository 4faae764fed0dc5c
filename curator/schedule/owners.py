"""Who holds a lease (host:pid:random, and whether that process is gone). Store writes
retried on a write conflict are in ``curator/store/schedule_rows.py``."""

from __future__ import annotations

import os
import socket
import uuid


def new_owner_id() -> str:
    """host:pid:random, unique per worker (and per manual run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_gone(owner: str | None) -> bool:
    """True when ``owner`` names a process of this host that no longer exists (its lease
    can be taken at once instead of waiting for it to expire)."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
