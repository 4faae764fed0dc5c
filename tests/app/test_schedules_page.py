"""The Schedules page on a small store of its own (no model needed: nothing runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from curator import schedule as sched
from curator.store import Store

# CURATOR_APP_FILE: run these against another copy of the app (e.g. the code before a fix)
APP_FILE = Path(os.environ.get("CURATOR_APP_FILE") or Path(__file__).resolve().parents[2]
                / "curator" / "app" / "streamlit_app.py")


def _app(store_path: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CURATOR_STORE", str(store_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=60)
    at.switch_page("views/schedules.py")
    return at.run()


def _store_with_schedule(tmp_path: Path, write_jsonl) -> Store:
    store = Store(tmp_path / "s")
    store.init()
    # The app shows its how-to for a store without data, so give it a dataset.
    from curator.ingestion.ingest import ingest

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p1", "response": "r1"}])
    ingest(store, str(data), "d")
    (tmp_path / "in").mkdir()
    sched.add_schedule(store, "nightly", "d", tmp_path / "in", every="1h")
    return store


def test_schedules_table_and_controls(tmp_path, monkeypatch, write_jsonl) -> None:
    store = _store_with_schedule(tmp_path, write_jsonl)
    at = _app(store.path, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["name"]) == ["nightly"]
    assert list(table["trigger"]) == ["every 1h"]
    # a new schedule is due at once: its state says so, as its next run does
    assert list(table["state"]) == ["due: waits for a worker"]
    assert list(table["next run (UTC)"]) == ["due now"]
    at.button(key="pause_nightly").click().run()
    assert not at.exception
    assert sched.get_schedule(store, "nightly").paused
    at.button(key="resume_nightly").click().run()
    assert not sched.get_schedule(store, "nightly").paused
    at.button(key="run_nightly").click().run()
    assert not at.exception
    assert "No runs yet" in " ".join(c.value for c in at.caption)
    # "Run now" says what runs it, and the state agrees with the next run
    note = " ".join(i.value for i in at.info)
    assert "nightly is due now: a running `curator worker` starts it" in note
    assert "if none is running, nothing runs nightly until one is started" in note
    table = at.dataframe[0].value
    assert list(table["state"]) == ["due: waits for a worker"]
    assert list(table["next run (UTC)"]) == ["due now"]
    assert at.query_params["schedule"] == "nightly"


def test_no_schedules_shows_how_to_add_one(tmp_path, monkeypatch, write_jsonl) -> None:
    from curator.ingestion.ingest import ingest

    store = Store(tmp_path / "s")
    ingest(store, str(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}])),
           "d")
    at = _app(store.path, monkeypatch)
    assert not at.exception
    assert "curator schedule add" in at.info[0].value


def test_overdue_schedule_is_due_now_and_runs_say_what_they_did(tmp_path, monkeypatch,
                                                                 write_jsonl) -> None:
    from curator.report import RunReport, StageReport

    store = _store_with_schedule(tmp_path, write_jsonl)
    # four finished runs as the worker records them (kind "schedule", the report as result)
    made = RunReport("sched-1", "nightly", kind="schedule", status="done", version=2,
                     files_new=["/in/a.jsonl"],
                     stages=[StageReport("continual", "continual", "sel-0007", n_pool=40,
                                         n_selected=12, parent="sel-0003")],
                     export="/x/exports/nightly/sched-1")
    quiet = RunReport("sched-2", "nightly", kind="schedule", status="done")
    failed = RunReport("sched-3", "nightly", kind="schedule", status="failed",
                       error="no model on this machine")
    # an idle run's note already says "nothing new": said once, not "nothing new; nothing new"
    idle = RunReport("sched-4", "nightly", kind="schedule", status="done",
                     note="nothing new since sel-0007 (v2)")
    for outcome in (made, quiet, failed, idle):
        store.start_run("schedule", "d", {"schedule": "nightly", "trigger": "due"},
                        run_id=outcome.run_id)
        store.finish_run(outcome.run_id, outcome.status, error=outcome.error,
                         result=outcome.to_dict())
        time.sleep(0.01)  # distinct start times: the history is newest first
    sched.request_run(store, "nightly")  # due at once: the next run time has passed
    at = _app(store.path, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.dataframe[0].value["next run (UTC)"]) == ["due now"]
    runs = at.dataframe[1].value
    assert list(runs["run_id"]) == ["sched-4", "sched-3", "sched-2", "sched-1"]
    assert list(runs["outcome"]) == [
        "nothing new since sel-0007 (v2)", "failed: no model on this machine", "nothing new",
        "1 new file -> v2; continual selection sel-0007 (parent sel-0003): 12 of 40; "
        "export /x/exports/nightly/sched-1"]



def test_history_names_quarantined_files_and_selections_made(tmp_path, monkeypatch,
                                                             write_jsonl) -> None:
    from curator.report import RunReport, StageReport

    store = _store_with_schedule(tmp_path, write_jsonl)
    (tmp_path / "in2").mkdir()
    sched.add_schedule(store, "weekly", "d", tmp_path / "in2", every="7d")
    bad = RunReport("sched-1", "nightly", kind="schedule", status="done", version=2,
                    files_bad=[{"path": "/in/broken.jsonl", "reason": "no prompt field"}])
    reused = RunReport("sched-2", "weekly", kind="schedule", status="done",
                       stages=[StageReport("continual", "continual", "sel-0004",
                                           reused=True)])
    for outcome in (bad, reused):
        store.start_run("schedule", "d", {"schedule": outcome.name, "trigger": "due"},
                        run_id=outcome.run_id)
        store.finish_run(outcome.run_id, outcome.status, result=outcome.to_dict())
    # what an idle run leaves on the schedule: the selection it conditioned on
    with store.atomic() as con:
        con.execute("UPDATE schedules SET last_selection_id = 'sel-0004' WHERE name = 'weekly'")
    # a link names the schedule to show
    monkeypatch.setenv("CURATOR_STORE", str(store.path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=60)
    at.switch_page("views/schedules.py")
    at.query_params["schedule"] = "nightly"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="schedule_pick").value == "nightly"
    runs = at.dataframe[1].value
    assert list(runs["outcome"]) == [
        "new version v2; 1 bad file quarantined: broken.jsonl (no prompt field)"]
    # a schedule that never made a selection shows none (reusing one is not making one)
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["weekly", "last selection"] is None
