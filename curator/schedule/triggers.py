"""Triggers: an interval anchored at the schedule's creation (runs do not drift) or a
5-field cron expression in UTC; the retry back-off after failed runs."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from curator.schedule.clock import _aware
from curator.schedule.errors import ScheduleError

RETRY_BASE_SECONDS = 60.0    # a failed run is retried after 1, 2, 4, ... minutes
RETRY_MAX_SECONDS = 3600.0   # ... at most an hour, and never later than the next trigger
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> int:
    """Seconds in "90", "90s", "15m", "1h", "1h30m", "2d", "1w"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().replace(" ", "")
        parts = _DURATION_RE.findall(s)
        if not s or "".join(n + u for n, u in parts).lower() != s.lower() \
                or (len(parts) > 1 and not all(u for _, u in parts)):   # "1h30": 30 what?
            raise ScheduleError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 1h30m, 1d")
        seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 1:
        raise ScheduleError(f"duration {text!r} must be at least one second")
    return int(round(seconds))


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def check_cron(expr: str) -> str:
    """A 5-field cron expression (minute hour day month weekday), evaluated in UTC."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise ScheduleError(f"bad cron expression {expr!r}: use 5 fields, minute hour "
                            "day-of-month month day-of-week, e.g. \"0 2 * * *\" (UTC)")
    return text


def cron_next(expr: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that matches ``expr`` (UTC)."""
    from croniter import croniter

    return _aware(croniter(check_cron(expr), _aware(after)).get_next(datetime))


def interval_next(anchor: datetime, every_seconds: float, after: datetime) -> datetime:
    """The first ``anchor + n * every`` strictly after ``after`` (missed slots are skipped,
    so a worker that was down runs once, not once per missed slot)."""
    anchor, after = _aware(anchor), _aware(after)
    if after < anchor:
        return anchor
    n = math.floor((after - anchor).total_seconds() / every_seconds) + 1
    return anchor + timedelta(seconds=n * every_seconds)




def retry_delay(failures: int) -> float:
    """Seconds before retrying after ``failures`` consecutive failed runs."""
    return min(RETRY_BASE_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)
