"""Clocks: the system's, or a manual one tests move by hand; datetimes stored naive UTC."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (tests, simulations): ``sleep`` advances it."""

    def __init__(self, start: datetime | str = "2025-01-01T00:00:00+00:00"):
        self._now = _aware(datetime.fromisoformat(start) if isinstance(start, str) else start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _to_db(dt: datetime | None) -> datetime | None:
    """The store keeps naive UTC timestamps."""
    return None if dt is None else _aware(dt).replace(tzinfo=None)


def _from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)
