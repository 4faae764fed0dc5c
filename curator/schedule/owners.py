"""Who holds a lease (host:pid:random, and whether that process is gone), and store writes
retried when another process's transaction conflicts with them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from curator.store import Store


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


def _is_conflict(exc: Exception) -> bool:
    return "conflict" in str(exc).lower()


def _write(store: Store, sql: str, params: list[Any], attempts: int = 20) -> int:
    """One UPDATE in its own transaction, retried when it conflicts with a concurrent write
    to the same row (a lease heartbeat, the app pausing a schedule); rows changed."""
    import duckdb

    for attempt in range(attempts):
        try:
            with store.atomic() as con:
                return con.execute(sql, params).fetchone()[0]
        except duckdb.TransactionException as exc:
            if not _is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    return 0
