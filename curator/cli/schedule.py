"""`curator schedule ...` and `curator worker`: thin shells over curator.schedule.

Registered on the main group by ``register(main)`` (``curator.cli`` calls it).
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime
from pathlib import Path

import click

from curator.cli.common import CuratorError, open_store, store_option, user_errors


def _when(dt: datetime | None) -> str:
    return "-" if dt is None else f"{dt:%Y-%m-%d %H:%M:%S}"


@click.group("schedule", context_settings={"help_option_names": ["-h", "--help"]})
def schedule() -> None:
    """Re-curate on a timetable when new files land in a watched folder.

    Each run ingests the folder's new files (by checksum: a renamed or re-copied file is
    not taken twice) as a new version, scores only the new samples, selects with the
    continual stage conditioned on the schedule's previous selection, and exports into
    <store>/exports/NAME/<run id>/ (and <store>/exports/NAME/latest). `curator worker`
    runs the schedules; times are UTC.
    """


@schedule.command("add")
@click.argument("name")
@click.option("--dataset", "-d", required=True, help="Dataset the new files are added to.")
@click.option("--watch", "watch_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder where new data lands (.jsonl, .json, .csv, .tsv, .parquet).")
@click.option("--every", default=None, help="Interval: 90s, 15m, 1h, 1h30m, 1d.")
@click.option("--cron", default=None, help='Cron expression in UTC, e.g. "0 2 * * *".')
@click.option("--recipe", "recipe_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Recipe with a continual stage (default: continual, DELIFT, 30%, the "
                   "embedded default model, JSONL export).")
@store_option
@user_errors
def add_cmd(name: str, dataset: str, watch_dir: Path, every: str | None, cron: str | None,
            recipe_path: Path | None, store_path: Path) -> None:
    """Add schedule NAME. It is due at once: the next worker cycle runs it."""
    from curator.schedule import add_schedule
    from curator.store import Store

    s = add_schedule(Store(store_path), name, dataset, watch_dir, every=every, cron=cron,
                     recipe=recipe_path)
    stage = s.get_recipe().stages
    spec = next(x for x in stage if x.stage == "continual")
    click.echo(f"schedule {s.name}: watches {s.watch_dir} for dataset {s.dataset}, "
               f"{s.trigger} (UTC), {spec.method} {spec.budget}; due now (the next "
               "`curator worker` cycle runs it)")


@schedule.command("list")
@store_option
@user_errors
def list_cmd(store_path: Path) -> None:
    """List schedules: trigger, state, next run and last run."""
    from curator.schedule import SystemClock, list_schedules
    from curator.store.schedule_rows import last_run_statuses

    store = open_store(store_path)
    rows = list_schedules(store)
    if not rows:
        click.echo("no schedules (add one with `curator schedule add`)")
        return
    now = SystemClock().now()
    statuses = last_run_statuses(store)
    table = [("name", "dataset", "trigger", "state", "next run (UTC)", "last run")]
    for s in rows:
        last = f"{statuses.get(s.last_run_id, '?')} {s.last_run_id}" if s.last_run_id else "-"
        table.append((s.name, s.dataset, s.trigger, s.state(now), _when(s.next_run_at), last))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for s in rows:
        if s.last_error:
            click.echo(f"{s.name}: last error ({s.failures} in a row): {s.last_error}")


@schedule.command("pause")
@click.argument("name")
@store_option
@user_errors
def pause_cmd(name: str, store_path: Path) -> None:
    """Stop starting runs of NAME (a run in progress finishes)."""
    from curator.schedule import pause_schedule

    pause_schedule(open_store(store_path), name)
    click.echo(f"schedule {name} paused")


@schedule.command("resume")
@click.argument("name")
@store_option
@user_errors
def resume_cmd(name: str, store_path: Path) -> None:
    """Start runs of NAME again (a trigger missed while paused runs once)."""
    from curator.schedule import resume_schedule

    s = resume_schedule(open_store(store_path), name)
    click.echo(f"schedule {name} resumed; next run {_when(s.next_run_at)} UTC")


@schedule.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even while a run holds its lease.")
@store_option
@user_errors
def remove_cmd(name: str, force: bool, store_path: Path) -> None:
    """Remove schedule NAME (its run history, versions, selections and exports stay)."""
    from curator.schedule import remove_schedule

    remove_schedule(open_store(store_path), name, force=force)
    click.echo(f"schedule {name} removed (its runs, selections and exports stay)")


@schedule.command("run")
@click.argument("name")
@click.option("--queue", is_flag=True,
              help="Do not run here: make it due so the worker runs it on its next cycle.")
@store_option
@user_errors
def run_cmd(name: str, queue: bool, store_path: Path) -> None:
    """Run schedule NAME now (even when paused or not due), in this process."""
    from curator.schedule import get_schedule, request_run, run_schedule, stop_on_signals

    store = open_store(store_path)
    if queue:
        s = request_run(store, name)
        click.echo(f"schedule {name} is due now: the next worker cycle runs it"
                   + (" (it is paused: resume it first)" if s.paused else ""))
        return
    echo = functools.partial(click.echo, err=True)
    with stop_on_signals(threading.Event(), echo) as stop:
        outcome = run_schedule(store, name, manual=True, stop=stop, echo=echo)
    if outcome is None:
        s = get_schedule(store, name)
        raise CuratorError(f"schedule {name} is running ({s.lock_owner}, lease until "
                                  f"{_when(s.lock_expires_at)} UTC)")
    if outcome.status != "done":
        raise CuratorError(f"run {outcome.run_id} failed: {outcome.error}")
    for line in outcome.lines():
        click.echo(line)


@schedule.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True)
@store_option
@user_errors
def history_cmd(name: str, limit: int, store_path: Path) -> None:
    """Runs of schedule NAME, newest first, with their status, counts and errors."""
    from curator.report import RunReport
    from curator.schedule import schedule_runs

    runs = schedule_runs(open_store(store_path), name, limit=limit)
    if not runs:
        click.echo(f"no runs of {name} yet")
        return
    for r in runs:
        what = RunReport.from_dict(r).summary()
        click.echo(f"{r['run_id']}  {r['status']:<7}  {r.get('trigger') or '-':<6}  {what}")


@click.command("worker")
@click.option("--once", is_flag=True,
              help="Run what is due and exit (for cron or a systemd timer); exit 1 if a "
                   "run failed.")
@click.option("--poll", default=30.0, show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds between looks for due schedules (at most).")
@store_option
@user_errors
def worker_cmd(once: bool, poll: float, store_path: Path) -> None:
    """Run due schedules until stopped (SIGINT/SIGTERM finish the current step; a second
    signal abandons it)."""
    from curator.schedule import stop_on_signals, worker

    echo = click.echo
    if not once:
        echo(f"worker on {Path(store_path).resolve()}: looking every {poll:g} s "
             "(Ctrl-C to stop)")
    with stop_on_signals(threading.Event(), echo) as stop:
        outcomes = worker(open_store(store_path), once=once, poll=poll, stop_event=stop,
                          echo=echo)
    failed = [o for o in outcomes if o.status != "done"]
    if once and not outcomes:
        echo("nothing due")
    if once and failed:
        raise CuratorError(
            f"{len(failed)} of {len(outcomes)} runs failed: "
            + "; ".join(f"{o.schedule}: {o.error}" for o in failed))


def register(main: click.Group) -> None:
    """Add `schedule` and `worker` to the `curator` command group."""
    main.add_command(schedule)
    main.add_command(worker_cmd)
