"""Scheduled re-curation (curator.schedule): triggers, the lease, runs, the worker.

Time comes from a ManualClock; models are the tiny random Llama. Most runs use the random
method (no model, fast); the end-to-end test uses DELIFT to check that only new samples are
scored and that the continual selection is conditioned on the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import curator.schedule as sch
import curator.schedule.files as sch_files
import curator.schedule.run as sch_run
from curator.outputs.subsets import verify_export
from curator.records import sample_id_for
from curator.report import RunReport
from curator.store import NotFound, Store
from curator.store.selection_rows import get_selection, selection_sample_ids
from tests import helpers

T0 = datetime(2025, 1, 1, tzinfo=UTC)
RANDOM = {"stages": [{"stage": "continual", "method": "random", "budget": "30%"}]}
DELIFT = {"scoring": {"k": 4, "max_length": 128},
          "stages": [{"stage": "continual", "method": "delift", "budget": "30%"}]}
pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model: see tests/conftest.py


@pytest.fixture(autouse=True)
def no_settle(monkeypatch):
    """Files written by the test are complete at once."""
    monkeypatch.setattr(sch_files, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def clock():
    return sch.ManualClock(T0)


@pytest.fixture
def watch(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


def rows(lo: int, hi: int) -> list[dict]:
    return [{"prompt": f"question {i}: what is {i} times 7?", "response": f"{i * 7}, {i}"}
            for i in range(lo, hi)]


def ids(lo: int, hi: int) -> set[str]:
    return {sample_id_for([{"role": "user", "content": r["prompt"]},
                           {"role": "assistant", "content": r["response"]}])
            for r in rows(lo, hi)}


def drop(folder: Path, name: str, lo: int, hi: int, extra: tuple[str, ...] = ()) -> Path:
    path = folder / name
    helpers.write_jsonl(path, [*rows(lo, hi), *extra])
    return path


def cycle(store: Store, clock, **kwargs) -> list[sch.RunOutcome]:
    return sch.worker(store, once=True, clock=clock, **kwargs)


def versions(store: Store, dataset: str = "d") -> list[int]:
    return [r[0] for r in store.query("SELECT version FROM versions WHERE dataset = ? "
                                      "ORDER BY version", [dataset])]


def selections(store: Store) -> list[str]:
    return [r[0] for r in store.query("SELECT selection_id FROM selections ORDER BY 1")]


# -- triggers -------------------------------------------------------------------------------

def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("after, expected", [
    ("2025-01-01T00:00:00", "2025-01-01T01:00:00"),   # at the anchor: the next slot
    ("2025-01-01T00:59:59", "2025-01-01T01:00:00"),
    ("2025-01-01T01:00:00", "2025-01-01T02:00:00"),   # strictly after
    ("2025-01-01T05:30:00", "2025-01-01T06:00:00"),   # missed slots are skipped, not queued
    ("2024-12-31T12:00:00", "2025-01-01T00:00:00"),   # before the anchor: the anchor
])
def test_interval_next_time_is_anchored(after, expected):
    assert sch.interval_next(utc("2025-01-01T00:00:00"), 3600, utc(after)) == utc(expected)


@pytest.mark.parametrize("expr, after, expected", [
    ("0 2 * * *", "2025-01-01T00:00:00", "2025-01-01T02:00:00"),
    ("0 2 * * *", "2025-01-01T02:00:00", "2025-01-02T02:00:00"),
    ("0 2 * * *", "2025-12-31T03:00:00", "2026-01-01T02:00:00"),
    ("0 2 * * *", "2025-03-30T01:30:00", "2025-03-30T02:00:00"),  # EU DST day: UTC has none
    ("*/15 * * * *", "2025-01-01T10:07:00", "2025-01-01T10:15:00"),
    ("*/15 * * * *", "2025-01-01T10:15:00", "2025-01-01T10:30:00"),
    ("*/15 * * * *", "2025-01-01T23:50:00", "2025-01-02T00:00:00"),
    ("0 9 * * 1", "2025-01-01T00:00:00", "2025-01-06T09:00:00"),   # next Monday
])
def test_cron_next_time_in_utc(expr, after, expected):
    assert sch.cron_next(expr, utc(after)) == utc(expected)


def test_cron_next_takes_other_timezones_as_utc_instants():
    from datetime import timezone

    paris = datetime(2025, 1, 1, 3, 30, tzinfo=timezone(timedelta(hours=1)))   # 02:30 UTC
    assert sch.cron_next("0 2 * * *", paris) == utc("2025-01-02T02:00:00")


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900),
                                           ("1h", 3600), ("1h30m", 5400), ("2d", 172800),
                                           ("1w", 604800), (45, 45)])
def test_parse_duration(text, seconds):
    assert sch.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "0", "-5m", "1h 30", "soon"])
def test_bad_durations_are_refused(text):
    with pytest.raises(sch.ScheduleError):
        sch.parse_duration(text)


@pytest.mark.parametrize("expr", ["0 2 * *", "0 25 * * *", "* * * * * *", "nightly"])
def test_bad_cron_is_refused(expr):
    with pytest.raises(sch.ScheduleError, match="cron"):
        sch.check_cron(expr)


def test_retry_delay_doubles_up_to_an_hour():
    assert [sch.retry_delay(n) for n in (1, 2, 3, 7, 20)] == [60, 120, 240, 3600, 3600]


# -- schedules in the store -----------------------------------------------------------------

def test_add_list_and_validation(store, watch, clock):
    s = sch.add_schedule(store, "nightly", "d", watch, cron="0  2 * * *", clock=clock)
    assert (s.cron, s.every_seconds, s.trigger) == ("0 2 * * *", None, "cron 0 2 * * *")
    assert s.next_run_at == T0                       # due at once
    assert s.recipe["stages"][0]["stage"] == "continual"
    assert s.recipe["stages"][0]["method"] == "delift" and s.recipe["model"] is None
    hourly = sch.add_schedule(store, "hourly", "e", watch, every="1h", recipe=RANDOM,
                              clock=clock)
    assert hourly.trigger == "every 1h" and hourly.recipe["dataset"] == "e"
    assert [x.name for x in sch.list_schedules(store)] == ["hourly", "nightly"]
    assert [x.name for x in sch.due_schedules(store, T0)] == ["hourly", "nightly"]
    bad = [
        (dict(name="nightly", dataset="x", every="1h"), "exists"),
        (dict(name="x", dataset="d", every="1h"), "already watches"),
        (dict(name="x", dataset="y"), "exactly one"),
        (dict(name="x", dataset="y", every="1h", cron="* * * * *"), "exactly one"),
        (dict(name="bad name", dataset="y", every="1h"), "bad schedule name"),
        (dict(name="x", dataset="y", every="1h",
              recipe={"stages": [{"stage": "instruction"}]}), "continual stage"),
        (dict(name="x", dataset="y", every="1h",
              recipe={"inputs": ["a.jsonl"], **RANDOM}), "inputs"),
        (dict(name="x", dataset="y", every="1h",
              recipe={"stages": [{"stage": "continual", "budget": "lots"}]}), "budget"),
    ]
    for kwargs, message in bad:
        with pytest.raises(sch.ScheduleError, match=message):
            sch.add_schedule(store, watch_dir=watch, clock=clock, **kwargs)
    with pytest.raises(sch.ScheduleError, match="does not exist"):
        sch.add_schedule(store, "x", "y", watch / "nope", every="1h")
    with pytest.raises(NotFound, match="known: hourly, nightly"):
        sch.get_schedule(store, "weekly")


def test_recipe_file_is_stored_with_the_schedule_dataset(store, watch, tmp_path, clock):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset: other\nmodel: some/model\nstages:\n"
                      "  - {stage: continual, method: embedding, budget: 10}\n"
                      "export: {format: alpaca}\n")
    s = sch.add_schedule(store, "n", "d", watch, every="1h", recipe=recipe, clock=clock)
    r = s.get_recipe()
    assert (r.dataset, r.model, r.stages[0].method, r.stages[0].budget, r.export.format) == \
        ("d", "some/model", "embedding", "10", "alpaca")


# -- runs -----------------------------------------------------------------------------------

@pytest.mark.slow  # scheduled runs end to end: make test-slow
def test_new_file_gives_version_scores_continual_selection_and_export(store, watch, clock,
                                                                      lm):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=DELIFT, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    [first] = cycle(store, clock, model_loader=lambda: lm)
    assert first.status == "done", first.error
    assert (first.version, first.selection.stage, first.parent) == (1, "instruction", None)
    sel1 = first.selection_id
    assert first.selection.n_selected == 3 and first.selection.pairs_computed > 0
    assert versions(store) == [1]

    before = {t: set(store.query(f"SELECT {col} FROM {t}"))
              for t, col in (("utilities", "target_id, example_id"), ("losses", "sample_id"),
                             ("embeddings", "sample_id"))}
    drop(watch, "b.jsonl", 10, 20)
    clock.advance(1800)
    assert cycle(store, clock, model_loader=lambda: lm) == []           # not due yet
    clock.advance(1800)
    [second] = cycle(store, clock, model_loader=lambda: lm)
    assert second.status == "done", second.error
    assert (second.version, second.selection.stage, second.parent) == (2, "continual", sel1)
    assert second.files_new == [str(watch / "b.jsonl")] and second.files_seen == 1
    assert versions(store) == [1, 2]
    sel2 = get_selection(store, second.selection_id)
    assert (sel2.stage, sel2.parent, sel2.version, sel2.n_pool) == ("continual", sel1, 2, 10)
    assert set(selection_sample_ids(store, sel2.selection_id)) <= ids(10, 20)
    # Only the new samples were scored: every new utility has a new target, every new loss
    # and embedding is of a new sample.
    new_utils = set(store.query("SELECT target_id, example_id FROM utilities")) - \
        before["utilities"]
    assert new_utils and {t for t, _ in new_utils} <= ids(10, 20)
    assert {e for _, e in new_utils} - ids(10, 20) <= set(selection_sample_ids(store, sel1))
    for table in ("losses", "embeddings"):
        new = set(store.query(f"SELECT sample_id FROM {table}")) - before[table]
        assert {r[0] for r in new} <= ids(10, 20)
    # One export folder per run; `latest` points at the newest; the first is untouched.
    root = store.path / "exports" / "n"
    assert sorted(p.name for p in root.iterdir()) == sorted([first.run_id, second.run_id,
                                                             "latest"])
    assert Path(second.export) == (root / second.run_id).resolve()
    assert os.readlink(root / "latest") == second.run_id
    for run in (first, second):
        assert verify_export(run.export) == []
    manifest = json.loads((root / "latest" / "manifest.json").read_text())
    assert manifest["selection"]["parent"] == sel1
    assert len((root / "latest" / "data.jsonl").read_text().splitlines()) == 3
    s = sch.get_schedule(store, "n")
    assert (s.last_selection_id, s.last_run_id, s.failures, s.lock_owner) == \
        (second.selection_id, second.run_id, 0, None)
    assert s.next_run_at == T0 + timedelta(hours=2)
    assert s.last_export == second.export

    # The same files copied again, under other names: nothing new happens.
    shutil.copy(watch / "b.jsonl", watch / "b-copy.jsonl")
    (watch / "sub").mkdir()
    shutil.copy(watch / "a.jsonl", watch / "sub" / "a-again.jsonl")
    clock.advance(3600)
    [third] = cycle(store, clock, model_loader=lambda: lm)
    assert third.status == "done" and third.files_new == [] and third.files_seen == 4
    assert third.selection_id is None and third.export is None
    assert versions(store) == [1, 2] and selections(store) == [sel1, second.selection_id]
    assert os.readlink(root / "latest") == second.run_id
    history = sch.schedule_runs(store, "n")
    assert [h["run_id"] for h in history] == [third.run_id, second.run_id, first.run_id]
    assert [h["status"] for h in history] == ["done"] * 3
    assert RunReport.from_dict(history[1]).selection_id == second.selection_id
    assert history[1]["seconds"]["total"] > 0 and history[0]["note"].startswith("nothing new")


def test_two_copies_in_one_drop_are_ingested_once(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    shutil.copy(watch / "a.jsonl", watch / "a (1).jsonl")
    [run] = cycle(store, clock)
    assert run.files_new == [str(watch / "a (1).jsonl")] and run.files_seen == 1
    assert store.query("SELECT n_members FROM versions") == [(10,)]


def test_unchanged_files_are_not_hashed_again(store, watch, clock, monkeypatch):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    drop(watch, "b.jsonl", 10, 20)
    cycle(store, clock)
    hashed: list[str] = []
    real = sch_files.file_sha256

    def counting(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(sch_files, "file_sha256", counting)
    clock.advance(3600)
    [run] = cycle(store, clock)
    assert hashed == [] and run.files_seen == 2
    drop(watch, "b.jsonl", 10, 21)                        # changed in place
    os.utime(watch / "b.jsonl", ns=(0, 10**18))           # whatever the clock's resolution
    clock.advance(3600)
    [changed] = cycle(store, clock)
    assert hashed == ["b.jsonl"] and changed.version == 2 and changed.selection.n_pool == 1


def test_bad_files_are_quarantined_and_the_rest_processed(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "good.jsonl", 0, 10, extra=('{"prompt": "no response"}',))
    (watch / "more.csv").write_text("prompt,response\n" + "".join(
        f"q{i},a{i}\n" for i in range(5)))
    (watch / "broken.json").write_text('{"prompt": "a", "response": ')
    (watch / "empty.jsonl").write_text("")
    (watch / "all-bad.jsonl").write_text("not json\n{\"x\": 1}\n")
    (watch / "notes.txt").write_text("ignored: not an input type")
    (watch / ".hidden.jsonl").write_text("ignored: hidden (a file being written)")
    [run] = cycle(store, clock)
    assert run.status == "done", run.error
    assert sorted(Path(p).name for p in run.files_new) == ["good.jsonl", "more.csv"]
    bad = {Path(b["path"]).name: b["reason"] for b in run.files_bad}
    assert set(bad) == {"broken.json", "empty.jsonl", "all-bad.jsonl"}
    assert "not valid JSON" in bad["broken.json"] and bad["empty.jsonl"] == "empty file"
    assert bad["all-bad.jsonl"].startswith("no usable rows (line 1: malformed JSON")
    assert run.n_quarantined_rows == 1 and run.version == 1
    assert store.query("SELECT n_members, n_quarantined FROM versions") == [(15, 1)]
    assert store.query("SELECT count(*) FROM quarantined_files WHERE schedule = 'n'") == [(3,)]
    assert store.query("SELECT count(*) FROM quarantine WHERE version = 1") == [(1,)]
    # Known bad files are not retried (or reported) until their content changes.
    clock.advance(3600)
    [again] = cycle(store, clock)
    assert again.files_bad == [] and again.files_seen == 5 and again.files_new == []
    drop(watch, "empty.jsonl", 20, 25)          # fixed
    clock.advance(3600)
    [fixed] = cycle(store, clock)
    assert [Path(p).name for p in fixed.files_new] == ["empty.jsonl"] and fixed.version == 2
    assert fixed.selection.stage == "continual" and fixed.selection.n_pool == 5


def test_pause_resume_remove(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    assert sch.pause_schedule(store, "n").state(T0) == "paused"
    assert cycle(store, clock) == [] and versions(store) == []
    clock.advance(7200)                                    # paused through two triggers
    assert cycle(store, clock) == []
    assert sch.resume_schedule(store, "n").state(clock.now()) == "waiting"
    [run] = cycle(store, clock)                            # one catch-up run, not two
    assert run.status == "done" and cycle(store, clock) == []
    assert sch.get_schedule(store, "n").next_run_at == T0 + timedelta(hours=3)
    sch.remove_schedule(store, "n")
    assert sch.list_schedules(store) == []
    assert len(sch.schedule_runs(store, "n")) == 1        # history stays
    with pytest.raises(NotFound):
        sch.pause_schedule(store, "n")


def test_remove_refuses_a_running_schedule_unless_forced(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    assert sch.acquire_lease(store, "n", "w1", T0) is not None
    with pytest.raises(sch.ScheduleError, match="running"):
        sch.remove_schedule(store, "n", clock=clock)
    sch.remove_schedule(store, "n", clock=clock, force=True)
    assert sch.list_schedules(store) == []


def test_run_now_ignores_the_timetable(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, cron="0 2 * * *", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    [first] = cycle(store, clock)
    assert sch.get_schedule(store, "n").next_run_at == T0 + timedelta(hours=2)
    drop(watch, "b.jsonl", 10, 20)
    clock.advance(600)
    assert sch.run_schedule(store, "n", clock=clock) is None          # not due
    sch.pause_schedule(store, "n")
    now = sch.run_schedule(store, "n", clock=clock, manual=True)      # now, even paused
    assert (now.status, now.trigger, now.version, now.parent) == \
        ("done", "manual", 2, first.selection_id)
    s = sch.get_schedule(store, "n")
    assert s.next_run_at == T0 + timedelta(hours=2) and s.paused       # timetable unchanged
    sch.resume_schedule(store, "n")
    assert sch.request_run(store, "n", clock=clock).next_run_at == clock.now()
    [queued] = cycle(store, clock)
    assert queued.trigger == "due" and queued.note.startswith("nothing new")


def test_first_run_conditions_on_an_existing_selection(store, watch, clock, write_jsonl):
    from curator.config import StageSpec
    from curator.ingestion.ingest import ingest
    from curator.stages import select_stage

    ingest(store, write_jsonl("v1.jsonl", rows(0, 10)), "d")
    manual = select_stage(store, "d", StageSpec(method="random", budget="3")).selection_id
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "b.jsonl", 10, 20)
    [run] = cycle(store, clock)
    assert (run.selection.stage, run.parent, run.version, run.selection.n_pool) == \
        ("continual", manual, 2, 10)


def test_first_run_without_new_files_selects_what_is_there(store, watch, clock, write_jsonl):
    from curator.ingestion.ingest import ingest

    ingest(store, write_jsonl("v1.jsonl", rows(0, 10)), "d")
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    [run] = cycle(store, clock)
    assert (run.files_new, run.selection.stage, run.selection.n_pool, run.version) == \
        ([], "instruction", 10, None)
    assert run.export is not None


@pytest.mark.slow  # two DualSFT mask passes on the tiny model: make test-slow
def test_a_scheduled_mask_follows_the_recipes_target_and_scoring(store, watch, clock, lm,
                                                                   write_jsonl):
    """The mask a schedule builds for its selection is the one its recipe's stage describes:
    toward the stage's target set and with the recipe's scoring options, as a recipe run
    builds it (issue 25: schedules used the default options and a held-out slice)."""
    import torch

    from curator.config import ScoringOptions
    from curator.ingestion.ingest import ingest
    from curator.outputs.mask_files import load_mask
    from curator.stages.gradient import mask_for_selection
    from curator.store.datasets import load_latest
    from curator.store.selection_rows import get_mask_record

    ingest(store, write_jsonl("target.jsonl", rows(100, 104)), "t")
    drop(watch, "a.jsonl", 0, 8)
    recipe = {"scoring": {"max_length": 64, "batch_size": 4},
              "stages": [{"stage": "continual", "method": "random", "budget": "50%",
                          "param_budget": "10%", "target": "t"}]}
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=recipe, clock=clock)
    [run] = cycle(store, clock, model_loader=lambda: lm)
    assert run.status == "done", run.error
    sel = run.selection_id
    assert run.selection.mask["scope_density"] == pytest.approx(0.10, abs=0.01)
    stored = load_mask(store.artifacts / get_mask_record(store, sel)["path"])

    def rebuilt(**kwargs) -> dict:
        mask_for_selection(store, sel, lm, "10%", **kwargs)
        return load_mask(store.artifacts / get_mask_record(store, sel)["path"])

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    recipes = rebuilt(targets=load_latest(store, "t"),
                      options=ScoringOptions(max_length=64, batch_size=4))
    assert same(stored, recipes)
    # and the choice matters here: the defaults without the target give another mask
    assert not same(stored, rebuilt())


def test_an_empty_first_run_records_no_data(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    [run] = cycle(store, clock)
    assert (run.status, run.note, run.selection_id) == ("done", "no data yet", None)


# -- safety ---------------------------------------------------------------------------------

def test_two_workers_at_once_run_it_once(store, watch, clock, monkeypatch):
    """Two threads, each with its own Store, reach the lease at the same moment."""
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    barrier = threading.Barrier(2, timeout=30)
    real_acquire = sch.acquire_lease
    attempts: list[bool] = []

    def racing_acquire(*args, **kwargs):
        barrier.wait()
        got = real_acquire(*args, **kwargs)
        attempts.append(got is not None)
        return got

    monkeypatch.setattr(sch_run, "acquire_lease", racing_acquire)
    results: list = []

    def work():
        results.append(sch.worker(Store(store.path, lock_timeout=30), once=True, clock=clock))

    threads = [threading.Thread(target=work) for _ in range(2)]
    # Hold a connection meanwhile: two threads of one process opening the same file at the
    # same instant can race in DuckDB's instance cache ("Unique file handle conflict"), a
    # store-level matter this test is not about.
    with store.connect():
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(attempts) == [False, True]
    assert sorted(len(r) for r in results) == [0, 1]
    assert versions(store) == [1] and len(selections(store)) == 1
    assert len(sch.schedule_runs(store, "n")) == 1


def test_an_expired_lease_is_taken_over(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    # A worker on another machine started a run and died: its lease runs 10 more minutes.
    dead = "otherhost:4242:deadbeef"
    store.start_run("schedule", "d", {"schedule": "n", "owner": dead}, run_id="sched-dead")
    store.query("UPDATE schedules SET lock_owner = ?, lock_expires_at = ?, last_run_id = ? "
                "WHERE name = 'n'", [dead, (T0 + timedelta(minutes=10)).replace(tzinfo=None),
                                     "sched-dead"])
    assert sch.get_schedule(store, "n").state(T0) == "running"
    assert cycle(store, clock) == []
    assert sch.run_schedule(store, "n", clock=clock, manual=True) is None
    clock.advance(601)
    [run] = cycle(store, clock)
    assert run.status == "done" and run.version == 1
    dead_run = store.get_run("sched-dead")
    assert dead_run["status"] == "failed" and dead_run["error"].startswith("abandoned")
    assert sch.get_schedule(store, "n").lock_owner is None


def test_the_lease_of_a_dead_local_process_is_taken_at_once(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    owner = f"{socket.gethostname()}:{gone}:cafe"
    store.query("UPDATE schedules SET lock_owner = ?, lock_expires_at = ? WHERE name = 'n'",
                [owner, (T0 + timedelta(hours=5)).replace(tzinfo=None)])
    assert sch.acquire_lease(store, "n", "me:1:x", T0) is not None
    # A live owner (this process) keeps its lease until it expires.
    live = f"{socket.gethostname()}:{os.getpid()}:beef"
    store.query("UPDATE schedules SET lock_owner = ? WHERE name = 'n'", [live])
    assert sch.acquire_lease(store, "n", "me:1:x", T0) is None


KILLED_CHILD = """
import os, sys
import curator.schedule as sch
import curator.schedule.files as sch_files
from curator.store import Store

sch_files.SETTLE_SECONDS = 0
# Die the hard way between the ingest's commit and recording the file's checksum: the
# worst moment (a version exists that the store does not yet link to its file).
sch_files._record_ingested = lambda *a, **k: os._exit(9)
sch.run_schedule(Store(sys.argv[1]), "n", clock=sch.ManualClock(sys.argv[2]))
"""


@pytest.mark.slow  # kills a worker process: make test-slow
def test_a_killed_worker_is_recovered_by_the_next(store, watch, clock, tmp_path):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    child = subprocess.run([sys.executable, str(script), str(store.path), T0.isoformat()],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    s = sch.get_schedule(store, "n")
    assert s.lock_owner and s.lock_owner.split(":")[1] != str(os.getpid())
    assert versions(store) == [1] and store.query("SELECT * FROM ingested_files") == []
    assert store.get_run(s.last_run_id)["status"] == "running"

    [run] = cycle(store, clock)          # the dead process's lease is taken at once
    assert run.status == "done", run.error
    assert run.files_new == [] and run.files_seen == 1         # not ingested twice
    assert versions(store) == [1]
    assert store.query("SELECT path, version FROM ingested_files") == \
        [(str(watch / "a.jsonl"), 1)]
    assert (run.selection.stage, run.selection.n_pool) == ("instruction", 10) and run.export
    killed = store.get_run(s.last_run_id)
    assert killed["status"] == "failed" and "abandoned" in killed["error"]
    # The record says what happened: it read "0 new files" and no version (issue 28).
    assert (run.resumed, run.pool_version, run.version) == (s.last_run_id, 1, None)
    assert f"resumed run {s.last_run_id}, which stopped after ingesting v1; instruction " \
           "selection" in run.summary()
    assert json.loads(store.get_run(run.run_id)["result"])["resumed"] == s.last_run_id
    assert not (store.path / "schedules" / "n" / "inbox").exists() or \
        not any((store.path / "schedules" / "n" / "inbox").iterdir())


@pytest.mark.slow  # scheduled runs end to end: make test-slow
def test_a_failed_run_keeps_the_last_good_export_and_is_retried(store, watch, clock,
                                                                monkeypatch):
    import curator.outputs.subsets

    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    [good] = cycle(store, clock)
    root = store.path / "exports" / "n"
    drop(watch, "b.jsonl", 10, 20)
    real_export = curator.outputs.subsets.export_selection

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(curator.outputs.subsets, "export_selection", broken)
    clock.advance(3600)
    [failed] = cycle(store, clock)
    assert (failed.status, failed.error, failed.version) == ("failed", "disk full", 2)
    assert store.get_run(failed.run_id)["error"] == "disk full"
    s = sch.get_schedule(store, "n")
    assert (s.failures, s.last_error, s.last_export) == (1, "disk full", good.export)
    assert s.last_selection_id == good.selection_id
    assert s.next_run_at == clock.now() + timedelta(seconds=60)          # backoff
    assert sorted(p.name for p in root.iterdir()) == sorted([good.run_id, "latest"])
    assert os.readlink(root / "latest") == good.run_id and verify_export(good.export) == []

    clock.advance(30)
    assert cycle(store, clock) == []                       # still backing off
    clock.advance(30)
    [again] = cycle(store, clock)                          # fails again: twice the wait
    assert again.status == "failed"
    assert sch.get_schedule(store, "n").next_run_at == clock.now() + timedelta(seconds=120)
    monkeypatch.setattr(curator.outputs.subsets, "export_selection", real_export)
    clock.advance(120)
    [retry] = cycle(store, clock)
    assert retry.status == "done", retry.error
    assert retry.files_new == [] and versions(store) == [1, 2]      # no duplicate version
    assert retry.selection_id == failed.selection_id and retry.selection.reused
    assert retry.parent == good.selection_id
    s = sch.get_schedule(store, "n")
    assert (s.failures, s.last_error, s.last_export) == (0, None, retry.export)
    assert os.readlink(root / "latest") == retry.run_id
    # Back on the timetable: anchored at the creation time.
    assert s.next_run_at == T0 + timedelta(hours=2)


def test_a_missing_watched_folder_fails_the_run(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    watch.rmdir()
    [run] = cycle(store, clock)
    assert run.status == "failed" and "does not exist" in run.error
    assert sch.get_schedule(store, "n").state(clock.now()) == "retrying"


def test_stop_between_steps_marks_the_run_interrupted(store, watch, clock, monkeypatch):
    import curator.ingestion.ingest

    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)
    stop = threading.Event()
    real_ingest = curator.ingestion.ingest.ingest

    def ingest_then_signal(*args, **kwargs):
        result = real_ingest(*args, **kwargs)
        stop.set()                     # SIGTERM arrives while the ingest step runs
        return result

    monkeypatch.setattr(curator.ingestion.ingest, "ingest", ingest_then_signal)
    outcomes = sch.worker(store, clock=clock, stop_event=stop, sleep=clock.sleep)
    [run] = outcomes
    assert (run.status, run.error, run.version, run.selection_id) == \
        ("failed", "interrupted", 1, None)                 # the step finished, then stopped
    s = sch.get_schedule(store, "n")
    assert (s.lock_owner, s.failures, s.next_run_at) == (None, 0, T0)    # still due
    monkeypatch.setattr(curator.ingestion.ingest, "ingest", real_ingest)
    [resumed] = cycle(store, clock)
    assert resumed.status == "done" and resumed.files_new == [] and versions(store) == [1]
    assert resumed.selection.stage == "instruction"


def test_keyboard_interrupt_abandons_the_step_and_releases_the_lease(store, watch, clock,
                                                                      monkeypatch):
    import curator.ingestion.ingest

    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    drop(watch, "a.jsonl", 0, 10)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(curator.ingestion.ingest, "ingest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cycle(store, clock)
    s = sch.get_schedule(store, "n")
    assert s.lock_owner is None and s.next_run_at == T0
    assert sch.schedule_runs(store, "n")[0]["error"] == "interrupted"
    assert versions(store) == []


# -- the worker loop ------------------------------------------------------------------------

def test_worker_sleeps_until_the_next_trigger(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="2h", recipe=RANDOM, clock=clock)
    sch.add_schedule(store, "c", "d2", watch, cron="*/45 * * * *", recipe=RANDOM, clock=clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    outcomes = sch.worker(store, clock=clock, sleep=sleep, poll=3600, max_cycles=5)
    started = [(o.schedule, o.started_at[11:16]) for o in outcomes]
    assert started == [("c", "00:00"), ("n", "00:00"), ("c", "00:45"), ("c", "01:00"),
                       ("c", "01:45"), ("c", "02:00"), ("n", "02:00")]
    assert slept == [2700, 900, 2700, 900]
    assert sch.seconds_until_due(store, clock.now()) == 2700


def test_worker_stops_when_asked(store, watch, clock):
    sch.add_schedule(store, "n", "d", watch, every="1h", recipe=RANDOM, clock=clock)
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        stop.set()

    assert len(sch.worker(store, clock=clock, sleep=sleep, stop_event=stop)) == 1


def test_sigterm_sets_the_stop_flag_and_a_second_signal_interrupts():
    import signal

    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with sch.stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5)       # the handler raises here
    assert signal.getsignal(signal.SIGTERM) is before
