"""The worker: runs due schedules until stopped (or once, for cron and systemd timers)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from curator.models import LoadedModel
from curator.schedule.clock import Clock, SystemClock, _aware
from curator.schedule.definitions import due_schedules, list_schedules
from curator.schedule.lease import LEASE_SECONDS
from curator.schedule.outcome import RunOutcome
from curator.schedule.owners import new_owner_id
from curator.schedule.run import run_schedule
from curator.store import Store, StoreError

POLL_SECONDS = 30.0          # the worker looks for due schedules at least this often


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
