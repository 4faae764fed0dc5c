"""Schedules in the store: add, list, pause, resume, remove, request a run, history, and
which are due."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from curator.config import ExportSpec, Recipe, RecipeError, StageSpec, recipe_from_dict
from curator.schedule.clock import Clock, SystemClock, _aware, _from_db, _to_db
from curator.schedule.errors import ScheduleError
from curator.schedule.owners import _owner_gone
from curator.schedule.triggers import (
    check_cron,
    cron_next,
    format_duration,
    interval_next,
    parse_duration,
)
from curator.store import NotFound, Store
from curator.store.schedule_rows import (
    delete_schedule,
    insert_schedule,
    lock_holder,
    schedule_exists,
    schedule_names,
    schedule_row,
    schedule_rows,
    schedule_run_rows,
    schedule_watching,
    set_next_run_at,
    set_paused,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def next_trigger(schedule: Schedule, after: datetime) -> datetime:
    if schedule.cron:
        return cron_next(schedule.cron, after)
    return interval_next(schedule.created_at, float(schedule.every_seconds or 0), after)

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


_SCHEDULE_COLS = [f.name for f in Schedule.__dataclass_fields__.values()]


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
        if schedule_exists(con, name):
            raise ScheduleError(f"a schedule named {name!r} exists (remove it first, or "
                                "pick another name)")
        other = schedule_watching(con, dataset, str(watch))
        if other:
            raise ScheduleError(f"schedule {other!r} already watches {watch} for dataset "
                                f"{dataset!r}")
        insert_schedule(con, name, dataset, str(watch), every_seconds, cron,
                        json.dumps(resolved.to_dict()), _to_db(now), _to_db(now))
    return get_schedule(store, name)


def get_schedule(store: Store, name: str) -> Schedule:
    row = schedule_row(store, name, _SCHEDULE_COLS)
    if row is None:
        known = schedule_names(store)
        hint = f" (known: {', '.join(known)})" if known else " (there are no schedules)"
        raise NotFound(f"no schedule {name!r}{hint}")
    return _schedule(row)


def list_schedules(store: Store) -> list[Schedule]:
    store.init()
    return [_schedule(r) for r in schedule_rows(store, _SCHEDULE_COLS)]


def pause_schedule(store: Store, name: str) -> Schedule:
    """Stop starting runs of ``name`` (a run in progress finishes)."""
    with store.connect():
        get_schedule(store, name)
        set_paused(store, name, True)
        return get_schedule(store, name)


def resume_schedule(store: Store, name: str) -> Schedule:
    """Start runs again; a trigger missed while paused leads to one run at the next cycle."""
    with store.connect():
        get_schedule(store, name)
        set_paused(store, name, False)
        return get_schedule(store, name)


def request_run(store: Store, name: str, clock: Clock | None = None) -> Schedule:
    """Make ``name`` due now: a worker runs it on its next cycle (the app's "run now")."""
    now = (clock or SystemClock()).now()
    with store.connect():
        get_schedule(store, name)
        set_next_run_at(store, name, _to_db(now))
        return get_schedule(store, name)


def remove_schedule(store: Store, name: str, *, force: bool = False,
                    clock: Clock | None = None) -> None:
    """Delete a schedule. Its run history, datasets, selections and exports stay."""
    get_schedule(store, name)
    now = (clock or SystemClock()).now()
    with store.atomic() as con:
        row = lock_holder(con, name)
        expires = _from_db(row[1]) if row else None
        if row and row[0] and expires and expires > now and not _owner_gone(row[0]) \
                and not force:
            raise ScheduleError(f"schedule {name!r} is running ({row[0]}); pause it and wait, "
                                "or remove it with --force")
        delete_schedule(con, name)


def schedule_runs(store: Store, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Run history, newest first: run_id, schedule, status, error, started_at, finished_at,
    and the run's result (counts, timings, outputs) flattened into the dict."""
    store.init()
    out = []
    for row in schedule_run_rows(store, name, limit):
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
