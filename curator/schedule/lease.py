"""The lease: one run per schedule at a time, even across processes and machines sharing a
store. A worker takes it with one conditional UPDATE (free, expired, or held by a process
of this host that no longer exists) and renews it from a heartbeat thread; a worker that
dies stops renewing and the next one takes over when the lease ends."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from curator.schedule.clock import Clock, _aware, _to_db
from curator.schedule.definitions import Schedule, get_schedule
from curator.schedule.owners import _owner_gone
from curator.store import Store
from curator.store.schedule_rows import extend_lease, free_lease, is_conflict, take_lease

LEASE_SECONDS = 600.0        # a lease not renewed for this long is free for another worker


def acquire_lease(store: Store, name: str, owner: str, now: datetime, *,
                  lease_seconds: float = LEASE_SECONDS, require_due: bool = False
                  ) -> Schedule | None:
    """Take ``name``'s lease for ``owner``; the schedule as it was before, or None when
    another worker holds it (or, with ``require_due``, when it is paused or not due).

    One conditional UPDATE decides: two workers racing for it cannot both succeed (across
    processes the store's file lock orders them; within one, the loser's transaction
    conflicts)."""
    import duckdb

    now = _aware(now)
    before = get_schedule(store, name)
    gone = before.lock_owner if _owner_gone(before.lock_owner) else None
    try:
        updated = take_lease(store, name, owner, _to_db(now + timedelta(seconds=lease_seconds)),
                             _to_db(now), gone or owner,
                             due_at=_to_db(now) if require_due else None)
    except duckdb.TransactionException as exc:
        if is_conflict(exc):
            return None
        raise
    return before if updated else None


def renew_lease(store: Store, name: str, owner: str, until: datetime) -> bool:
    """Extend the lease; False when ``owner`` no longer holds it."""
    return extend_lease(store, name, owner, _to_db(until))


def release_lease(store: Store, name: str, owner: str) -> None:
    free_lease(store, name, owner)


class _Heartbeat:
    """Renews a lease every ``every`` seconds of real time from a daemon thread."""

    def __init__(self, store: Store, name: str, owner: str, clock: Clock,
                 lease_seconds: float):
        self.store, self.name, self.owner, self.clock = store, name, owner, clock
        self.lease_seconds = lease_seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{name}", daemon=True)

    def _loop(self) -> None:
        every = max(min(self.lease_seconds / 3, 60.0), 0.05)
        while not self._stop.wait(every):
            try:
                until = self.clock.now() + timedelta(seconds=self.lease_seconds)
                if not renew_lease(self.store, self.name, self.owner, until):
                    self.lost = True
                    return
            except Exception:  # a busy store or a write conflict: try again next beat
                continue

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
