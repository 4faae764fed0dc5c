"""Scheduled re-curation: watch a folder, and when new files land ingest them, score only
what is new, select with the continual stage conditioned on the schedule's previous
selection, and export the result into a folder per run.

Modules, top to bottom (``curator.schedule`` re-exports their public names):

- triggers: an interval (``every_seconds``, anchored at the schedule's creation so runs
  do not drift) or a 5-field cron expression in UTC; times come from an injectable clock;
- ``definitions``: schedules in the store: add, list, pause, resume, remove, request a run;
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

from curator.schedule.clock import Clock, ManualClock, SystemClock
from curator.schedule.definitions import (
    Schedule,
    add_schedule,
    default_recipe,
    due_schedules,
    get_schedule,
    list_schedules,
    next_trigger,
    pause_schedule,
    remove_schedule,
    request_run,
    resume_schedule,
    schedule_recipe,
    schedule_runs,
)
from curator.schedule.errors import Interrupted, LeaseLost, ScheduleError
from curator.schedule.files import SETTLE_SECONDS, check_input_file
from curator.schedule.lease import LEASE_SECONDS, acquire_lease, release_lease, renew_lease
from curator.schedule.outcome import RunOutcome, export_folder, schedule_folder
from curator.schedule.owners import new_owner_id
from curator.schedule.run import run_schedule
from curator.schedule.triggers import (
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    check_cron,
    cron_next,
    format_duration,
    interval_next,
    parse_duration,
    retry_delay,
)
from curator.schedule.worker import (
    POLL_SECONDS,
    run_due,
    seconds_until_due,
    stop_on_signals,
    worker,
)

__all__ = [
    "Clock", "Interrupted", "LEASE_SECONDS", "LeaseLost", "ManualClock", "POLL_SECONDS",
    "RETRY_BASE_SECONDS", "RETRY_MAX_SECONDS", "RunOutcome", "SETTLE_SECONDS", "Schedule",
    "ScheduleError", "SystemClock", "acquire_lease", "add_schedule", "check_cron",
    "check_input_file", "cron_next", "default_recipe", "due_schedules", "export_folder",
    "format_duration", "get_schedule", "interval_next", "list_schedules", "new_owner_id",
    "next_trigger", "parse_duration", "pause_schedule", "release_lease", "remove_schedule",
    "renew_lease", "request_run", "resume_schedule", "retry_delay", "run_due", "run_schedule",
    "schedule_folder", "schedule_recipe", "schedule_runs", "seconds_until_due",
    "stop_on_signals", "worker",
]
