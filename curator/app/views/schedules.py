"""Schedules: re-curation jobs, their next run, run history with errors, and controls."""

from __future__ import annotations

from datetime import datetime, timezone

import curator_ui as ui
import streamlit as st

from curator import schedule as sched
from curator.report import RunReport
from curator.schedule.worker import POLL_SECONDS

st.title("Schedules")
store = ui.require_store()


def next_run(s: sched.Schedule, now: datetime) -> str:
    """When it runs next, in words; "due now" once the time has passed (as the CLI says):
    the next `curator worker` cycle runs it."""
    if s.paused:
        return "paused"
    if s.next_run_at is None:
        return "-"
    if s.next_run_at <= now:
        return "due now"
    return f"{s.next_run_at:%Y-%m-%d %H:%M:%S}"


def state(s: sched.Schedule, now: datetime) -> str:
    """One state that agrees with the next run: running, paused, due (waiting for a
    worker), retrying after a failure, or scheduled."""
    if s.running(now):
        return "running"
    if s.paused:
        return "paused"
    if s.next_run_at is not None and s.next_run_at <= now:
        return "due: waits for a worker"
    return "retrying after a failure" if s.failures else "scheduled"


def selections_made(runs: list[dict]) -> dict[str, str]:
    """Per schedule, the last selection one of its runs made (a reused one is not made)."""
    made: dict[str, str] = {}
    for r in runs:  # newest first
        run = RunReport.from_dict(r)
        if run.status == "done" and run.selection and not run.selection.reused:
            made.setdefault(run.name, run.selection.selection_id)
    return made


def worker_note(name: str, schedules: list[sched.Schedule], now: datetime) -> str:
    """What "Run now" did and whether anything will run it: the app never runs a job."""
    busy = [s.name for s in schedules if s.running(now)]
    seen = (f"A worker is running {', '.join(busy)} now; it starts {name} when that is done."
            if busy else
            f"The app cannot see a worker between runs: if none is running, nothing runs "
            f"{name} until one is started, e.g. `curator worker --store {ui.store_path()}` "
            "(or `--once` to run what is due and stop).")
    return (f"{name} is due now: a running `curator worker` starts it within "
            f"{POLL_SECONDS:.0f} s. {seen}")


def outcome(run: dict) -> str:
    """What a run did, in the run report's words: failed (and why), nothing new, or what
    it made."""
    return RunReport.from_dict(run).summary()


def controls(s: sched.Schedule, schedules: list[sched.Schedule]) -> None:
    """Pause / resume / run now. Run now only makes the schedule due: a worker runs it
    (the app never runs a long job inside a page)."""
    c1, c2, c3 = st.columns(3)
    if s.paused:
        if c1.button("Resume", key=f"resume_{s.name}"):
            sched.resume_schedule(store, s.name)
            st.toast(f"{s.name} resumed")
            st.rerun()
    elif c1.button("Pause", key=f"pause_{s.name}"):
        sched.pause_schedule(store, s.name)
        st.toast(f"{s.name} paused")
        st.rerun()
    if c2.button("Run now", key=f"run_{s.name}",
                 help="Makes it due: the next `curator worker` cycle runs it."):
        sched.request_run(store, s.name)
        st.session_state["schedule_msg"] = worker_note(s.name, schedules,
                                                       datetime.now(timezone.utc))
        st.rerun()
    c3.caption(f"watch `{s.watch_dir}` · dataset `{s.dataset}`")


with ui.guard():
    schedules = sched.list_schedules(store)
    if not schedules:
        st.info("No schedules yet. Point curator at the folder where new data lands:\n\n"
                "```\ncurator schedule add nightly --dataset mydata --watch ./incoming "
                "--every 1d\ncurator worker\n```")
        st.stop()
    now = datetime.now(timezone.utc)
    made = selections_made(sched.schedule_runs(store, None, limit=500))
    st.dataframe([{"name": s.name, "dataset": s.dataset, "trigger": s.trigger,
                   "state": state(s, now), "next run (UTC)": next_run(s, now),
                   "last run": s.last_run_id, "last selection": made.get(s.name),
                   "failures": s.failures, "last error": s.last_error}
                  for s in schedules], key="schedule_table", hide_index=True, placeholder="-",
                 column_config={"state": st.column_config.TextColumn(width="medium")})
    names = [s.name for s in schedules]
    params = ui.url_params("schedules", ("schedule",))
    ui.url_choice(params, "schedule", "schedule_pick", names, "schedule")
    name = st.selectbox("schedule", names, key="schedule_pick")
    chosen = next(s for s in schedules if s.name == name)
    controls(chosen, schedules)
    if msg := st.session_state.pop("schedule_msg", None):
        st.info(msg, icon=":material/schedule:")
    if chosen.last_error:
        st.error(f"last error: {chosen.last_error}")
    st.subheader("Run history")
    runs = sched.schedule_runs(store, name, limit=50)
    if not runs:
        st.caption("No runs yet: start `curator worker` (or `curator worker --once`).")
    else:
        keep = ("run_id", "status", "trigger", "started_at", "finished_at")
        st.dataframe([{**{k: r.get(k) for k in keep}, "outcome": outcome(r)} for r in runs],
                     key="schedule_runs", hide_index=True, placeholder="-",
                     column_config={"outcome": st.column_config.TextColumn(width="large")})
    ui.write_url("schedules", {"schedule": name})
