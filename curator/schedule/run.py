"""One run of a schedule, recorded in ``runs`` (kind 'schedule'): files, selection, export.

Every step is idempotent, so a run that dies anywhere is finished by the next one: files
are taken by checksum, an ingest creates its version in one transaction, scores are
cached, identical selections are reused, exports are written atomically into a new folder
and ``latest`` moves only after a run succeeds."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from curator.config import ExportSpec, Recipe, StageSpec
from curator.models import LoadedModel
from curator.pipeline import LazyModel, Pipeline
from curator.report import StageReport
from curator.schedule.clock import Clock, SystemClock, _to_db
from curator.schedule.definitions import Schedule, get_schedule, next_trigger
from curator.schedule.errors import Interrupted, LeaseLost
from curator.schedule.files import _ingest_new, _reconcile_inboxes, _scan
from curator.schedule.lease import LEASE_SECONDS, _Heartbeat, acquire_lease, release_lease
from curator.schedule.outcome import RunOutcome, export_folder
from curator.schedule.owners import new_owner_id
from curator.schedule.triggers import retry_delay
from curator.store import NotFound, Store
from curator.store.schedule_rows import fail_abandoned_run, finish_schedule_run, set_last_run_id


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
        outcome = RunOutcome(run_id, name, kind="schedule",
                             trigger="manual" if manual else "due", started_at=now.isoformat())
        try:
            # Read again now that the lease is ours: a run that finished between the read
            # in acquire_lease and the update may have moved last_selection_id.
            sched = get_schedule(store, name)
            _recover_abandoned(store, sched, before.lock_owner)
            recipe = sched.get_recipe()
            store.start_run("schedule", sched.dataset, {"schedule": name, "owner": owner,
                                                         "trigger": outcome.trigger},
                            run_id=run_id)
            set_last_run_id(store, name, run_id)
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
        say(outcome.headline())
    return outcome


def _recover_abandoned(store: Store, sched: Schedule, previous_owner: str | None) -> None:
    """A run still marked running while we hold the lease was left by a dead worker."""
    if not sched.last_run_id:
        return
    who = previous_owner or "a worker"
    fail_abandoned_run(store, sched.last_run_id,
                       f"abandoned: {who} stopped before finishing (the next run resumed it)")


def _finish(store: Store, before: Schedule, outcome: RunOutcome, owner: str, now: datetime,
            interrupted: bool) -> None:
    with store.connect():
        _finish_in(store, before, outcome, owner, now, interrupted)


def _finish_in(store: Store, before: Schedule, outcome: RunOutcome, owner: str, now: datetime,
               interrupted: bool) -> None:
    """Record the run, then update the schedule and release the lease in one transaction
    (only while this worker still holds the lease)."""
    store.finish_run(outcome.run_id, outcome.status, error=outcome.error,
                     result=outcome.to_dict())
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
    finish_schedule_run(store, before.name, owner, _to_db(next_at), failures, error,
                        (outcome.selection_id or outcome.parent) if done else None,
                        outcome.export if done else None)


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




# -- run steps: selection and export -----------------------------------------------------

def _select(store: Store, sched: Schedule, recipe: Recipe, outcome: RunOutcome,
            model_loader: LazyModel,
            say: Callable[[str], None]) -> bool:
    """Select from what is new since the schedule's previous selection. False when there
    is nothing new (the run is done without a new selection)."""
    with store.connect():
        plan = _plan_selection(store, sched, recipe, outcome)
    if plan is None:
        return False
    spec, parent = plan
    # quiet: a scheduled run's log says what it did in its outcome
    pipe = Pipeline(store, model_loader, recipe.scoring)
    t0 = time.monotonic()
    result = pipe.select(sched.dataset, spec, previous_selection=parent)
    stage = StageReport.from_outcome(spec.name or spec.stage, result, time.monotonic() - t0)
    outcome.parent = stage.parent
    # The recipe's target and scoring options, as a recipe run builds it (this once used
    # the defaults and no target: a different mask from the same recipe).
    stage.mask = pipe.stage_mask(spec, result.selection_id)
    stage.seconds = time.monotonic() - t0
    outcome.stages = [stage]
    return True


def _plan_selection(store: Store, sched: Schedule, recipe: Recipe, outcome: RunOutcome
                    ) -> tuple[StageSpec, str | None] | None:
    """The stage to run and its parent, or None when there is nothing new to select from.

    The parent is the schedule's last selection; a schedule with none yet conditions on
    the dataset's latest selection if it has one, else its first run is an instruction
    stage over the whole latest version (same method, budget and settings)."""
    from curator.store.datasets import count_new_members, latest_version
    from curator.store.selection_rows import get_selection, latest_selection

    latest = latest_version(store, sched.dataset)
    if latest is None:
        outcome.note = "no data yet"
        return None
    outcome.pool_version = latest
    _note_resumed(store, sched, outcome, latest)
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
    n_new = count_new_members(store, sched.dataset, parent_version, latest)
    if n_new == 0:
        outcome.note = f"nothing new since {parent} (v{parent_version})"
        outcome.parent = parent    # adopted as the schedule's base when it had none
        return None
    return replace(spec, parent=parent, pool="new", version=None), parent


def _note_resumed(store: Store, sched: Schedule, outcome: RunOutcome, latest: int) -> None:
    """When this run selects from a version it did not ingest and the schedule's previous
    run did not finish, that run ingested it: say so (a resumed kill used to read "0 new
    files" with no version, as if nothing had come in)."""
    from curator.store.selection_rows import get_selection

    prev = sched.last_run_id
    if outcome.version is not None or not prev or prev == outcome.run_id:
        return
    try:
        run = store.get_run(prev)
    except NotFound:
        return
    if run is None or run.get("status") == "done":
        return
    base = None
    if sched.last_selection_id:
        with contextlib.suppress(NotFound):
            base = get_selection(store, sched.last_selection_id).version
    if base is None or latest > base:
        outcome.resumed = prev


def _export(store: Store, sched: Schedule, spec: ExportSpec, outcome: RunOutcome) -> None:
    """Write the run's export into its own folder; ``latest`` moves only in ``_finish``'s
    success path (here, after the export is complete)."""
    from curator.outputs.subsets import export_selection

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
