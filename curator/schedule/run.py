"""Scheduled re-curation: watch a folder, and when new files land ingest them, score only
what is new, select with the continual stage conditioned on the schedule's previous
selection, and export the result into a folder per run.

Pieces, top to bottom:

- triggers: an interval (``every_seconds``, anchored at the schedule's creation so runs
  do not drift) or a 5-field cron expression in UTC; times come from an injectable clock;
- schedules in the store: add, list, pause, resume, remove, request a run;
- the lease: one run per schedule at a time, even across processes and machines sharing
  a store. A worker takes the lease with one conditional UPDATE (free, expired, or held
  by a process of this host that no longer exists) and renews it from a heartbeat thread;
  a worker that dies stops renewing and the next worker takes over when the lease ends;
- ``run_schedule``: one run, recorded in ``runs`` (kind 'schedule'). Every step is
  idempotent, so a run that dies anywhere is finished by the next one: files are taken by
  checksum, an ingest creates its version in one transaction (and a version committed by
  a dead run is recognised from its inbox, so no file is ingested twice), scores are
  cached, identical selections are reused, exports are written atomically into a new
  folder and ``latest`` moves only after a run succeeds;
- ``worker``: runs due schedules until stopped (or once, for cron and systemd timers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from curator.config import ExportSpec, Recipe, RecipeError, StageSpec, recipe_from_dict
from curator.export import sha256_file as file_sha256
from curator.models import LoadedModel
from curator.pipeline import LazyModel, Pipeline
from curator.store import NotFound, Store, StoreError
from curator.store.datasets import has_versions
from curator.store.inputs import record_ingested

LEASE_SECONDS = 600.0        # a lease not renewed for this long is free for another worker
RETRY_BASE_SECONDS = 60.0    # a failed run is retried after 1, 2, 4, ... minutes
RETRY_MAX_SECONDS = 3600.0   # ... at most an hour, and never later than the next trigger
SETTLE_SECONDS = 2.0         # a file modified more recently may still be being written
POLL_SECONDS = 30.0          # the worker looks for due schedules at least this often

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")


class ScheduleError(ValueError):
    """A schedule cannot be created or changed as asked (message is for the user)."""


class Interrupted(Exception):
    """The worker was asked to stop; the run ends between two steps."""


class LeaseLost(Exception):
    """Another worker took this run's lease (this one stopped renewing it in time)."""


# -- clocks -------------------------------------------------------------------------------

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


# -- triggers -----------------------------------------------------------------------------

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


def next_trigger(schedule: Schedule, after: datetime) -> datetime:
    if schedule.cron:
        return cron_next(schedule.cron, after)
    return interval_next(schedule.created_at, float(schedule.every_seconds or 0), after)


def retry_delay(failures: int) -> float:
    """Seconds before retrying after ``failures`` consecutive failed runs."""
    return min(RETRY_BASE_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


# -- schedules in the store ---------------------------------------------------------------

@dataclass
class Schedule:
    name: str
    dataset: str
    watch_dir: str
    every_seconds: int | None
    cron: str | None
    recipe: dict[str, Any]
    paused: bool
    next_run_at: datetime | None
    last_run_id: str | None
    last_selection_id: str | None
    lock_owner: str | None
    lock_expires_at: datetime | None
    created_at: datetime
    failures: int = 0
    last_error: str | None = None
    last_export: str | None = None

    @property
    def trigger(self) -> str:
        """"every 1h" or "cron 0 2 * * *"."""
        return f"cron {self.cron}" if self.cron else f"every {format_duration(self.every_seconds)}"

    def running(self, now: datetime) -> bool:
        return self.lock_owner is not None and self.lock_expires_at is not None \
            and self.lock_expires_at > _aware(now)

    def state(self, now: datetime) -> str:
        """paused, running, retrying (the last run failed) or waiting."""
        if self.running(now):
            return "running"
        if self.paused:
            return "paused"
        return "retrying" if self.failures else "waiting"

    def get_recipe(self) -> Recipe:
        return recipe_from_dict(self.recipe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SCHEDULE_COLS = ", ".join(f.name for f in Schedule.__dataclass_fields__.values())


def _schedule(row: dict[str, Any]) -> Schedule:
    row = dict(row)
    row["recipe"] = json.loads(row["recipe"]) if row["recipe"] else {}
    for key in ("next_run_at", "lock_expires_at", "created_at"):
        row[key] = _from_db(row[key])
    row["failures"] = row["failures"] or 0
    return Schedule(**row)


def default_recipe(dataset: str) -> Recipe:
    """Continual stage, DELIFT, 30% budget, the embedded default model, JSONL export."""
    return Recipe(dataset=dataset, stages=[StageSpec(stage="continual", method="delift",
                                                     budget="30%")],
                  export=ExportSpec(format="jsonl")).validate()


def schedule_recipe(recipe: Recipe | dict[str, Any] | str | Path | None,
                    dataset: str) -> Recipe:
    """A recipe made fit for a schedule: its dataset is the schedule's, its input is the
    watched folder (so it may not list ``inputs``), and it needs a continual stage, which
    each run uses (the first run, with nothing to condition on, uses the same settings as
    an instruction stage). The export folder is chosen per run (``out`` is ignored)."""
    from curator.config import load_recipe

    if recipe is None:
        return default_recipe(dataset)
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = recipe_from_dict({**recipe, "dataset": dataset})
    recipe = replace(recipe, dataset=dataset)
    if recipe.inputs:
        raise ScheduleError("a schedule's input is its watched folder: remove `inputs:` "
                            "from the recipe")
    if not any(s.stage == "continual" for s in recipe.stages):
        raise ScheduleError("a schedule's recipe needs a continual stage (e.g. `stages: "
                            "[{stage: continual, method: delift, budget: 30%}]`)")
    return recipe.validate()


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ScheduleError(f"bad schedule name {name!r}: use letters, digits, '.', '_' and "
                            "'-' (up to 64 characters, starting with a letter or digit)")
    return name


def add_schedule(store: Store, name: str, dataset: str, watch_dir: str | Path, *,
                 every: str | int | None = None, cron: str | None = None,
                 recipe: Recipe | dict[str, Any] | str | Path | None = None,
                 clock: Clock | None = None) -> Schedule:
    """Create a schedule. It is due at once: its first run happens on the next worker cycle.

    ``every`` ("1h", "15m" or seconds) or ``cron`` (5 fields, UTC), exactly one of them.
    """
    _check_name(name)
    if not dataset or not str(dataset).strip():
        raise ScheduleError("a schedule needs a dataset name")
    if (every is None) == (cron is None):
        raise ScheduleError("give exactly one of --every DURATION or --cron EXPRESSION")
    every_seconds = parse_duration(every) if every is not None else None
    cron = check_cron(cron) if cron is not None else None
    watch = Path(watch_dir).expanduser().resolve()
    if not watch.is_dir():
        raise ScheduleError(f"watched folder {watch} does not exist (create it first)")
    try:
        resolved = schedule_recipe(recipe, dataset)
    except RecipeError as exc:
        raise ScheduleError(str(exc)) from exc
    now = (clock or SystemClock()).now()
    store.init()
    with store.atomic() as con:
        if con.execute("SELECT 1 FROM schedules WHERE name = ?", [name]).fetchone():
            raise ScheduleError(f"a schedule named {name!r} exists (remove it first, or "
                                "pick another name)")
        other = con.execute("SELECT name FROM schedules WHERE dataset = ? AND watch_dir = ?",
                            [dataset, str(watch)]).fetchone()
        if other:
            raise ScheduleError(f"schedule {other[0]!r} already watches {watch} for dataset "
                                f"{dataset!r}")
        con.execute(
            "INSERT INTO schedules (name, dataset, watch_dir, every_seconds, cron, recipe, "
            "paused, next_run_at, created_at, failures) VALUES (?, ?, ?, ?, ?, ?, false, ?, ?, 0)",
            [name, dataset, str(watch), every_seconds, cron, json.dumps(resolved.to_dict()),
             _to_db(now), _to_db(now)])
    return get_schedule(store, name)


def get_schedule(store: Store, name: str) -> Schedule:
    rows = store.query_dicts(f"SELECT {_SCHEDULE_COLS} FROM schedules WHERE name = ?", [name])
    if not rows:
        known = [r[0] for r in store.query("SELECT name FROM schedules ORDER BY name")]
        hint = f" (known: {', '.join(known)})" if known else " (there are no schedules)"
        raise NotFound(f"no schedule {name!r}{hint}")
    return _schedule(rows[0])


def list_schedules(store: Store) -> list[Schedule]:
    store.init()
    return [_schedule(r) for r in store.query_dicts(
        f"SELECT {_SCHEDULE_COLS} FROM schedules ORDER BY name")]


def pause_schedule(store: Store, name: str) -> Schedule:
    """Stop starting runs of ``name`` (a run in progress finishes)."""
    with store.connect():
        get_schedule(store, name)
        _write(store, "UPDATE schedules SET paused = true WHERE name = ?", [name])
        return get_schedule(store, name)


def resume_schedule(store: Store, name: str) -> Schedule:
    """Start runs again; a trigger missed while paused leads to one run at the next cycle."""
    with store.connect():
        get_schedule(store, name)
        _write(store, "UPDATE schedules SET paused = false WHERE name = ?", [name])
        return get_schedule(store, name)


def request_run(store: Store, name: str, clock: Clock | None = None) -> Schedule:
    """Make ``name`` due now: a worker runs it on its next cycle (the app's "run now")."""
    now = (clock or SystemClock()).now()
    with store.connect():
        get_schedule(store, name)
        _write(store, "UPDATE schedules SET next_run_at = ? WHERE name = ?",
               [_to_db(now), name])
        return get_schedule(store, name)


def remove_schedule(store: Store, name: str, *, force: bool = False,
                    clock: Clock | None = None) -> None:
    """Delete a schedule. Its run history, datasets, selections and exports stay."""
    get_schedule(store, name)
    now = (clock or SystemClock()).now()
    with store.atomic() as con:
        row = con.execute("SELECT lock_owner, lock_expires_at FROM schedules WHERE name = ?",
                          [name]).fetchone()
        expires = _from_db(row[1]) if row else None
        if row and row[0] and expires and expires > now and not _owner_gone(row[0]) \
                and not force:
            raise ScheduleError(f"schedule {name!r} is running ({row[0]}); pause it and wait, "
                                "or remove it with --force")
        con.execute("DELETE FROM schedules WHERE name = ?", [name])
        con.execute("DELETE FROM watched_files WHERE schedule = ?", [name])


def schedule_runs(store: Store, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Run history, newest first: run_id, schedule, status, error, started_at, finished_at,
    and the run's result (counts, timings, outputs) flattened into the dict."""
    store.init()
    sql = ("SELECT run_id, json_extract_string(config, '$.schedule') AS schedule, dataset, "
           "status, error, started_at, finished_at, result, config FROM runs "
           "WHERE kind = 'schedule'")
    params: list[Any] = []
    if name is not None:
        sql += " AND json_extract_string(config, '$.schedule') = ?"
        params.append(name)
    sql += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
    params.append(limit)
    out = []
    for row in store.query_dicts(sql, params):
        result = json.loads(row.pop("result")) if row["result"] else {}
        config = json.loads(row.pop("config")) if row["config"] else {}
        row["trigger"] = config.get("trigger")
        row["owner"] = config.get("owner")
        out.append({**row, **{k: v for k, v in result.items() if k not in row}})
    return out


def due_schedules(store: Store, now: datetime) -> list[Schedule]:
    """Unpaused schedules whose next run is due and whose lease is free (expired, or held
    by a process of this host that is gone)."""
    now = _aware(now)
    return [s for s in list_schedules(store)
            if not s.paused and s.next_run_at is not None and s.next_run_at <= now
            and (not s.running(now) or _owner_gone(s.lock_owner))]


# -- the lease ----------------------------------------------------------------------------

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
    sql = ("UPDATE schedules SET lock_owner = ?, lock_expires_at = ? WHERE name = ? AND "
           "(lock_owner IS NULL OR lock_expires_at IS NULL OR lock_expires_at <= ? OR "
           "lock_owner = ?)")
    params: list[Any] = [owner, _to_db(now + timedelta(seconds=lease_seconds)), name,
                         _to_db(now), gone or owner]
    if require_due:
        sql += " AND NOT paused AND next_run_at IS NOT NULL AND next_run_at <= ?"
        params.append(_to_db(now))
    try:
        with store.atomic() as con:
            updated = con.execute(sql, params).fetchone()[0]
    except duckdb.TransactionException as exc:
        if _is_conflict(exc):
            return None
        raise
    return before if updated else None


def renew_lease(store: Store, name: str, owner: str, until: datetime) -> bool:
    """Extend the lease; False when ``owner`` no longer holds it."""
    with store.atomic() as con:
        return con.execute("UPDATE schedules SET lock_expires_at = ? WHERE name = ? AND "
                           "lock_owner = ?", [_to_db(until), name, owner]).fetchone()[0] > 0


def release_lease(store: Store, name: str, owner: str) -> None:
    _write(store, "UPDATE schedules SET lock_owner = NULL, lock_expires_at = NULL "
           "WHERE name = ? AND lock_owner = ?", [name, owner])


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


# -- one run ------------------------------------------------------------------------------

@dataclass
class RunOutcome:
    """What one run did (also stored as the run's result)."""

    run_id: str
    schedule: str
    status: str = "running"              # done or failed
    trigger: str = "due"                 # due or manual
    started_at: str = ""                 # clock time, ISO
    finished_at: str | None = None
    files_new: list[str] = field(default_factory=list)
    files_seen: int = 0                  # already ingested (same content), skipped
    files_waiting: list[str] = field(default_factory=list)  # still being written
    files_bad: list[dict[str, str]] = field(default_factory=list)  # path, reason
    version: int | None = None           # the version this run created
    n_new_samples: int = 0               # in the pool selected from
    n_quarantined_rows: int = 0
    stage: str | None = None
    selection_id: str | None = None
    parent: str | None = None
    n_selected: int = 0
    reused_selection: bool = False
    pairs_computed: int = 0
    pairs_reused: int = 0
    mask: bool = False
    export: str | None = None
    note: str | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step, and total

    def summary(self) -> str:
        if self.status == "failed":
            return f"{self.schedule}: run {self.run_id} failed: {self.error}"
        parts = []
        if self.files_new:
            parts.append(f"{len(self.files_new)} new file{'s' * (len(self.files_new) != 1)}"
                         + (f" -> v{self.version}" if self.version else ""))
        if self.files_bad:
            parts.append(f"{len(self.files_bad)} bad file{'s' * (len(self.files_bad) != 1)} "
                         "quarantined")
        if self.selection_id:
            parts.append(f"{self.stage} selection {self.selection_id}"
                         + (f" (parent {self.parent})" if self.parent else "")
                         + f": {self.n_selected} of {self.n_new_samples}")
        if self.export:
            parts.append(f"export {self.export}")
        if self.note:
            parts.append(self.note)
        return f"{self.schedule}: run {self.run_id} done: " + "; ".join(parts)


def schedule_folder(store: Store, name: str) -> Path:
    """Where a schedule keeps the files of a run being ingested (<store>/schedules/NAME)."""
    return store.path.resolve() / "schedules" / name


def export_folder(store: Store, name: str) -> Path:
    """Exports of a schedule: one folder per run, and ``latest`` (a link to the newest good
    one) below ``<store>/exports/NAME``."""
    return store.path.resolve() / "exports" / name


def _check_stop(stop: threading.Event | None, heartbeat: _Heartbeat | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted("interrupted")
    if heartbeat is not None and heartbeat.lost:
        raise LeaseLost("lease lost: another worker took this schedule over")


def run_schedule(store: Store, name: str, *, clock: Clock | None = None,
                 model_loader: Callable[[], LoadedModel] | None = None,
                 models: dict[tuple, LoadedModel] | None = None,
                 manual: bool = False, owner: str | None = None,
                 stop: threading.Event | None = None,
                 echo: Callable[[str], None] | None = None,
                 lease_seconds: float = LEASE_SECONDS) -> RunOutcome | None:
    """Run schedule ``name`` once, if its lease can be taken; None when another worker is
    running it (or, unless ``manual``, when it is paused or not due).

    ``model_loader`` gives the model (tests); without it the recipe's model is loaded on
    first use, and kept in ``models`` (a dict the caller keeps between runs) if given.
    A failed run is recorded (status, error, what it did) and returned, not raised, and
    the schedule is retried after a backoff; an interrupt (``stop`` set, or
    KeyboardInterrupt) ends the run between steps, marks it failed with "interrupted",
    releases the lease and leaves the schedule due. The previous export is never touched.
    """
    clock = clock or SystemClock()
    owner = owner or new_owner_id()
    say = echo or (lambda _msg: None)
    now = clock.now()
    with store.connect():   # a few short operations: one open of the store
        before = acquire_lease(store, name, owner, now, lease_seconds=lease_seconds,
                               require_due=not manual)
        if before is None:
            return None
        run_id = f"sched-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        outcome = RunOutcome(run_id, name, trigger="manual" if manual else "due",
                             started_at=now.isoformat())
        try:
            # Read again now that the lease is ours: a run that finished between the read
            # in acquire_lease and the update may have moved last_selection_id.
            sched = get_schedule(store, name)
            _recover_abandoned(store, sched, before.lock_owner)
            recipe = sched.get_recipe()
            store.start_run("schedule", sched.dataset, {"schedule": name, "owner": owner,
                                                         "trigger": outcome.trigger},
                            run_id=run_id)
            _write(store, "UPDATE schedules SET last_run_id = ? WHERE name = ?",
                   [run_id, name])
        except BaseException:
            release_lease(store, name, owner)
            raise
    say(f"{name}: run {run_id} started ({outcome.trigger})")
    started = time.monotonic()
    interrupted = False
    try:
        with _Heartbeat(store, name, owner, clock, lease_seconds) as heartbeat:
            loader = LazyModel(recipe.model, dtype=recipe.scoring.dtype, loader=model_loader,
                               echo=say, cache=models)
            _run_steps(store, sched, recipe, outcome, loader, stop, heartbeat, say)
        outcome.status = "done"
    except Interrupted:
        interrupted = True
        outcome.status, outcome.error = "failed", "interrupted"
    except Exception as exc:
        outcome.status, outcome.error = "failed", str(exc) or type(exc).__name__
    except BaseException:  # KeyboardInterrupt, SystemExit: the step is abandoned
        interrupted = True
        outcome.status, outcome.error = "failed", "interrupted"
        raise
    finally:
        outcome.seconds["total"] = round(time.monotonic() - started, 3)
        outcome.finished_at = clock.now().isoformat()
        _finish(store, sched, outcome, owner, clock.now(), interrupted)
        say(outcome.summary())
    return outcome


def _recover_abandoned(store: Store, sched: Schedule, previous_owner: str | None) -> None:
    """A run still marked running while we hold the lease was left by a dead worker."""
    if not sched.last_run_id:
        return
    who = previous_owner or "a worker"
    with store.atomic() as con:
        con.execute("UPDATE runs SET status = 'failed', error = ?, updated_at = "
                    "current_timestamp, finished_at = current_timestamp WHERE run_id = ? "
                    "AND status = 'running'",
                    [f"abandoned: {who} stopped before finishing (the next run resumed it)",
                     sched.last_run_id])


def _finish(store: Store, before: Schedule, outcome: RunOutcome, owner: str, now: datetime,
            interrupted: bool) -> None:
    with store.connect():
        _finish_in(store, before, outcome, owner, now, interrupted)


def _finish_in(store: Store, before: Schedule, outcome: RunOutcome, owner: str, now: datetime,
               interrupted: bool) -> None:
    """Record the run, then update the schedule and release the lease in one transaction
    (only while this worker still holds the lease)."""
    store.finish_run(outcome.run_id, outcome.status, error=outcome.error,
                     result=asdict(outcome))
    try:
        sched = get_schedule(store, before.name)
    except NotFound:  # removed (with --force) while running
        return
    regular = next_trigger(sched, now)
    if outcome.status == "done":
        failures, error = 0, None
        if outcome.trigger == "manual" and sched.next_run_at is not None \
                and sched.next_run_at > now:
            next_at = sched.next_run_at      # a manual run leaves the timetable alone
        else:
            next_at = regular
    elif interrupted:
        failures, error = sched.failures, "interrupted"
        next_at = min(sched.next_run_at or now, now)      # still due
    else:
        failures, error = sched.failures + 1, outcome.error
        next_at = min(now + timedelta(seconds=retry_delay(failures)), regular)
    done = outcome.status == "done"
    _write(store,
           "UPDATE schedules SET next_run_at = ?, failures = ?, last_error = ?, "
           "last_selection_id = coalesce(?, last_selection_id), "
           "last_export = coalesce(?, last_export), lock_owner = NULL, "
           "lock_expires_at = NULL WHERE name = ? AND lock_owner = ?",
           [_to_db(next_at), failures, error,
            (outcome.selection_id or outcome.parent) if done else None,
            outcome.export if done else None, before.name, owner])


def _run_steps(store: Store, sched: Schedule, recipe: Recipe, outcome: RunOutcome,
               model_loader: LazyModel,
               stop: threading.Event | None, heartbeat: _Heartbeat,
               say: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    with store.connect():
        _reconcile_inboxes(store, sched, outcome.run_id)
    new = _scan(store, sched, outcome, say)
    outcome.seconds["scan"] = round(time.monotonic() - t0, 3)
    _check_stop(stop, heartbeat)
    if new:
        t0 = time.monotonic()
        _ingest_new(store, sched, outcome, new)
        outcome.seconds["ingest"] = round(time.monotonic() - t0, 3)
        _check_stop(stop, heartbeat)
    t0 = time.monotonic()
    if not _select(store, sched, recipe, outcome, model_loader, say):
        return
    outcome.seconds["select"] = round(time.monotonic() - t0, 3)
    _check_stop(stop, heartbeat)
    if recipe.export is not None:
        t0 = time.monotonic()
        _export(store, sched, recipe.export, outcome)
        outcome.seconds["export"] = round(time.monotonic() - t0, 3)


# -- run steps: files ---------------------------------------------------------------------

def _candidate_files(folder: Path) -> list[Path]:
    """Input files below ``folder`` (recursively), skipping hidden files and folders and
    files of other types (so "data.jsonl.part" or ".data.jsonl" is not read until renamed)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"watched folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in _INPUT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def check_input_file(path: Path) -> str | None:
    """Why ``path`` cannot be ingested (unreadable, empty, no usable row), or None."""
    from curator.readers import InputError, read_file
    from curator.records import split_prompt_response
    from curator.schemas import RowError, map_row

    if path.stat().st_size == 0:
        return "empty file"
    first_problem = None
    try:
        for row in read_file(path):
            reason = row.error
            if reason is None:
                try:
                    split_prompt_response(map_row(row.data or {})[0])
                    return None
                except (RowError, ValueError) as exc:
                    reason = str(exc)
            first_problem = first_problem or f"line {row.line}: {reason}"
    except (InputError, OSError, ValueError) as exc:
        return str(exc)
    except Exception as exc:  # pyarrow and friends raise their own types on corrupt files
        return f"unreadable: {exc}"
    return f"no usable rows ({first_problem})" if first_problem else "no rows"


def _scan(store: Store, sched: Schedule, outcome: RunOutcome,
          say: Callable[[str], None]) -> list[tuple[Path, str]]:
    """New files of the watched folder as (path, sha256); quarantines bad ones."""
    folder = Path(sched.watch_dir)
    with store.connect():
        known = {r[0] for r in store.query(
            "SELECT sha256 FROM ingested_files WHERE dataset = ? UNION "
            "SELECT sha256 FROM quarantined_files WHERE dataset = ?", [sched.dataset] * 2)}
        hashed = {r[0]: (r[1], r[2], r[3]) for r in store.query(
            "SELECT path, size, mtime_ns, sha256 FROM watched_files WHERE schedule = ?",
            [sched.name])}
    new: list[tuple[Path, str]] = []
    taken: set[str] = set()
    fresh: list[list[Any]] = []
    for path in _candidate_files(folder):
        stat = path.stat()
        if time.time() - stat.st_mtime < SETTLE_SECONDS:
            outcome.files_waiting.append(str(path))
            continue
        cached = hashed.get(str(path))
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            digest = cached[2]
        else:
            digest = file_sha256(path)
            fresh.append([sched.name, str(path), stat.st_size, stat.st_mtime_ns, digest])
        if digest in known or digest in taken:
            outcome.files_seen += 1
            continue
        reason = check_input_file(path)
        if reason is not None:
            outcome.files_bad.append({"path": str(path), "reason": reason})
            say(f"{sched.name}: quarantined {path}: {reason}")
            with store.atomic() as con:
                con.execute("INSERT OR IGNORE INTO quarantined_files (dataset, sha256, path, "
                            "reason, schedule, run_id) VALUES (?, ?, ?, ?, ?, ?)",
                            [sched.dataset, digest, str(path), reason, sched.name,
                             outcome.run_id])
            taken.add(digest)
            continue
        taken.add(digest)
        new.append((path, digest))
    if fresh:
        with store.atomic() as con:
            con.executemany("INSERT OR REPLACE INTO watched_files VALUES (?, ?, ?, ?, ?)",
                            fresh)
    return new


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ingest_new(store: Store, sched: Schedule, outcome: RunOutcome,
                new: list[tuple[Path, str]]) -> None:
    """All new files of a run become one new version (appended to the latest).

    The files are linked into an inbox folder named after the run, with a plan of their
    checksums, and the inbox is ingested (one transaction creates the version). If the
    worker dies after that commit and before the checksums are recorded, the next run
    finds the version by its source (the inbox) and records them (``_reconcile_inboxes``).
    """
    from curator.ingest import ingest

    inbox = schedule_folder(store, sched.name) / "inbox" / outcome.run_id
    inbox.mkdir(parents=True, exist_ok=True)
    plan = []
    for i, (path, digest) in enumerate(new):
        target = inbox / f"{i:04d}-{path.name}"
        _link_or_copy(path, target)
        plan.append({"sha256": digest, "path": str(path), "inbox": target.name})
    (inbox / ".plan.json").write_text(json.dumps(plan, indent=1))
    names = ", ".join(Path(p["path"]).name for p in plan)
    summary = ingest(store, str(inbox), sched.dataset, append=has_versions(store, sched.dataset),
                     message=f"schedule {sched.name}, run {outcome.run_id}: {names}"[:500])
    _record_ingested(store, sched.dataset, plan, summary.version)
    shutil.rmtree(inbox, ignore_errors=True)
    outcome.files_new = [p["path"] for p in plan]
    outcome.version = summary.version
    outcome.n_quarantined_rows = summary.n_quarantined


def _record_ingested(store: Store, dataset: str, plan: list[dict[str, str]],
                     version: int) -> None:
    record_ingested(store, dataset, [(p["sha256"], p["path"]) for p in plan], version)


def _reconcile_inboxes(store: Store, sched: Schedule, current_run: str) -> None:
    """Inboxes left by dead runs: a committed version gets its files recorded; an ingest
    that never committed left nothing in the store, and its files are simply new again."""
    root = schedule_folder(store, sched.name) / "inbox"
    if not root.is_dir():
        return
    for inbox in sorted(root.iterdir()):
        if inbox.name == current_run or not inbox.is_dir():
            continue
        plan_file = inbox / ".plan.json"
        rows = store.query("SELECT max(version) FROM versions WHERE dataset = ? AND source = ?",
                           [sched.dataset, str(inbox)])
        if rows and rows[0][0] is not None and plan_file.exists():
            _record_ingested(store, sched.dataset, json.loads(plan_file.read_text()),
                             int(rows[0][0]))
        shutil.rmtree(inbox, ignore_errors=True)


# -- run steps: selection and export -----------------------------------------------------

def _select(store: Store, sched: Schedule, recipe: Recipe, outcome: RunOutcome,
            model_loader: LazyModel,
            say: Callable[[str], None]) -> bool:
    """Select from what is new since the schedule's previous selection. False when there
    is nothing new (the run is done without a new selection)."""
    from curator.store.selections import get_mask_record

    with store.connect():
        plan = _plan_selection(store, sched, recipe, outcome)
    if plan is None:
        return False
    spec, parent = plan
    # quiet: a scheduled run's log says what it did in its outcome
    pipe = Pipeline(store, model_loader, recipe.scoring)
    result = pipe.select(sched.dataset, spec, previous_selection=parent)
    record = result.record
    outcome.stage, outcome.selection_id, outcome.parent = record.stage, result.selection_id, \
        record.parent
    outcome.n_new_samples, outcome.n_selected = record.n_pool, record.n_selected
    outcome.reused_selection = result.reused
    outcome.pairs_computed = sum(s.n_computed for s in result.scoring)
    outcome.pairs_reused = sum(s.n_reused for s in result.scoring)
    if spec.param_budget:
        # with the default scoring options, not the recipe's, as schedules always have
        pipe.ensure_mask(result.selection_id, spec.param_budget, seed=spec.seed)
    outcome.mask = get_mask_record(store, result.selection_id) is not None
    return True


def _plan_selection(store: Store, sched: Schedule, recipe: Recipe, outcome: RunOutcome
                    ) -> tuple[StageSpec, str | None] | None:
    """The stage to run and its parent, or None when there is nothing new to select from.

    The parent is the schedule's last selection; a schedule with none yet conditions on
    the dataset's latest selection if it has one, else its first run is an instruction
    stage over the whole latest version (same method, budget and settings)."""
    from curator.store.selections import get_selection, latest_selection

    versions = store.query("SELECT max(version) FROM versions WHERE dataset = ?",
                           [sched.dataset])
    latest = versions[0][0] if versions else None
    if latest is None:
        outcome.note = "no data yet"
        return None
    parent = sched.last_selection_id
    if parent is None:
        with contextlib.suppress(NotFound):
            parent = latest_selection(store, sched.dataset).selection_id
    spec = next(s for s in recipe.stages if s.stage == "continual")
    if parent is None:
        # Nothing to condition on: the first selection covers the whole version.
        function = spec.function if spec.function != "flcg" else None
        return replace(spec, stage="instruction", function=function, parent=None,
                       version=None), None
    parent_version = get_selection(store, parent).version
    n_new = store.query(
        "SELECT count(*) FROM version_members n ANTI JOIN (SELECT sample_id FROM "
        "version_members WHERE dataset = ? AND version = ?) p USING (sample_id) "
        "WHERE n.dataset = ? AND n.version = ?",
        [sched.dataset, parent_version, sched.dataset, latest])[0][0]
    if n_new == 0:
        outcome.note = f"nothing new since {parent} (v{parent_version})"
        outcome.parent = parent    # adopted as the schedule's base when it had none
        return None
    return replace(spec, parent=parent, pool="new", version=None), parent


def _export(store: Store, sched: Schedule, spec: ExportSpec, outcome: RunOutcome) -> None:
    """Write the run's export into its own folder; ``latest`` moves only in ``_finish``'s
    success path (here, after the export is complete)."""
    from curator.export import export_selection

    root = export_folder(store, sched.name)
    result = export_selection(store, outcome.selection_id, root / outcome.run_id, spec.format)
    outcome.export = str(result.path)
    _point_latest(root, outcome.run_id)


def _point_latest(root: Path, run_id: str) -> None:
    """Atomically point ``root/latest`` at ``root/run_id`` (a relative symlink)."""
    tmp = root / f".latest-{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(run_id, tmp)
        os.replace(tmp, root / "latest")
    except OSError:  # no symlinks here (some file systems): the store records last_export
        with contextlib.suppress(OSError):
            tmp.unlink()


# -- the worker ---------------------------------------------------------------------------

def run_due(store: Store, *, clock: Clock | None = None,
            model_loader: Callable[[], LoadedModel] | None = None,
            models: dict[tuple, LoadedModel] | None = None, owner: str | None = None,
            stop: threading.Event | None = None, echo: Callable[[str], None] | None = None,
            lease_seconds: float = LEASE_SECONDS) -> list[RunOutcome]:
    """Run every schedule that is due now (one after another); skip those another worker
    holds. Returns what ran."""
    clock = clock or SystemClock()
    outcomes = []
    for sched in due_schedules(store, clock.now()):
        if stop is not None and stop.is_set():
            break
        outcome = run_schedule(store, sched.name, clock=clock, model_loader=model_loader,
                               models=models, owner=owner, stop=stop, echo=echo,
                               lease_seconds=lease_seconds)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def seconds_until_due(store: Store, now: datetime) -> float | None:
    """Seconds until the earliest unpaused schedule is due (0 if one is due); None if none."""
    times = [s.next_run_at for s in list_schedules(store)
             if not s.paused and s.next_run_at is not None]
    if not times:
        return None
    return max((min(times) - _aware(now)).total_seconds(), 0.0)


def worker(store: Store, *, once: bool = False, clock: Clock | None = None,
           sleep: Callable[[float], None] | None = None,
           stop_event: threading.Event | None = None,
           model_loader: Callable[[], LoadedModel] | None = None,
           poll: float = POLL_SECONDS, echo: Callable[[str], None] | None = None,
           max_cycles: int | None = None, lease_seconds: float = LEASE_SECONDS
           ) -> list[RunOutcome]:
    """Run due schedules until ``stop_event`` is set (or once). Each cycle runs what is due,
    then sleeps until the next schedule is due, at most ``poll`` seconds. The model is
    loaded once and kept between runs. Returns every run's outcome."""
    import duckdb

    clock = clock or SystemClock()
    stop_event = stop_event or threading.Event()
    sleep = sleep or stop_event.wait
    owner = new_owner_id()
    models: dict[tuple, LoadedModel] = {}      # loaded once, kept between runs
    outcomes: list[RunOutcome] = []
    cycles = 0
    store.init()
    while not stop_event.is_set():
        try:
            outcomes += run_due(store, clock=clock, model_loader=model_loader, models=models,
                                owner=owner, stop=stop_event, echo=echo,
                                lease_seconds=lease_seconds)
        except (StoreError, duckdb.Error) as exc:
            if once:
                raise
            if echo:     # a busy or briefly unreadable store: try again next cycle
                echo(f"worker: {exc}")
        cycles += 1
        if once or (max_cycles is not None and cycles >= max_cycles) or stop_event.is_set():
            break
        wait = seconds_until_due(store, clock.now())
        sleep(poll if wait is None else min(max(wait, 0.5), poll))
    return outcomes


@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event,
                    echo: Callable[[str], None] | None = None) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set ``stop_event`` (the current step finishes, then the run ends as
    "interrupted"); a second signal raises KeyboardInterrupt (the step is abandoned; what
    was committed stays and the next run resumes from it). Main thread only."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        if stop_event.is_set():
            raise KeyboardInterrupt
        stop_event.set()
        if echo:
            echo(f"{signal.Signals(signum).name}: stopping after the current step "
                 "(send it again to abandon the step)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop_event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
