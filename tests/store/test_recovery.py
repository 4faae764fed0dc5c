"""Recovery: the next command that opens the store marks runs of this host's dead processes
abandoned and cleans what they left (staging rows, a schedule's lease, an export's
temporary folder); live processes, reused pids and other hosts' runs are told apart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

from curator.store import Store
from curator.store.recovery import clean_export_leftovers, process_alive, process_start

CHILD = textwrap.dedent("""
    import sys, time
    from curator.store import Store
    store = Store(sys.argv[1])
    run = store.start_run("ingest", "d")
    with store.atomic() as con:
        con.execute("INSERT INTO ingest_staging VALUES (?, 'x', NULL, 'f', 1)", [run])
        con.execute("INSERT INTO quarantine VALUES (?, 'd', NULL, 'f', 2, 'bad', 'raw')", [run])
    print(run, flush=True)
    time.sleep(600)
""")


def _status(store_path, run_id):
    r = Store(store_path).get_run(run_id)   # a new Store: a new command
    return r["status"], r["error"]


def test_a_killed_process_is_recovered_by_the_next_command(tmp_path):
    path = tmp_path / "s"
    Store(path).init()
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        run_id = child.stdout.readline().strip()
        assert run_id.startswith("ingest-")
        # While the process lives, another command leaves its run alone.
        assert _status(path, run_id) == ("running", None)
        assert Store(path).query("SELECT count(*) FROM ingest_staging") == [(1,)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    store = Store(path)
    assert store.get_run(run_id)["status"] == "failed"   # the first open recovered it
    assert store.get_run(run_id)["error"] == (
        f"abandoned: process {child.pid} on {socket.gethostname()} ended without finishing")
    assert [r.run_id for r in store.recovered] == [run_id]
    assert store.query("SELECT count(*) FROM ingest_staging") == [(0,)]
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


def _fake_run(store, run_id, kind="ingest", pid=None, host=None, start=None, config=None):
    with store.atomic() as con:
        con.execute("INSERT INTO runs (run_id, kind, status, config, pid, host, proc_start) "
                    "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                    [run_id, kind, json.dumps(config or {}), pid,
                     host or socket.gethostname(), start])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reused_pids_other_hosts_and_live_processes(tmp_path):
    store = Store(tmp_path / "s")
    store.init()
    me, my_start = os.getpid(), process_start(os.getpid())
    assert my_start is not None and process_alive(me, my_start)
    _fake_run(store, "alive", pid=me, start=my_start)
    _fake_run(store, "reused", pid=me, start="00000000:1")       # same pid, other process
    _fake_run(store, "dead", pid=_dead_pid())
    _fake_run(store, "elsewhere", pid=_dead_pid(), host="another-host")
    _fake_run(store, "no-pid", pid=None)
    recovered = Store(tmp_path / "s")
    assert sorted(r.run_id for r in recovered.recovered) == []   # not opened yet
    assert sorted(r["run_id"] for r in recovered.runs() if r["status"] == "failed") == \
        ["dead", "reused"]
    assert sorted(r.run_id for r in recovered.recovered) == ["dead", "reused"]
    assert recovered.get_run("reused")["error"] == \
        f"abandoned: process {me} on {socket.gethostname()} ended without finishing"
    assert {r["run_id"]: r["status"] for r in recovered.runs()} == {
        "alive": "running", "reused": "failed", "dead": "failed", "elsewhere": "running",
        "no-pid": "running"}


def test_a_dead_workers_schedule_lease_is_released(tmp_path):
    import curator.schedule as sch

    store = Store(tmp_path / "s")
    (tmp_path / "watch").mkdir()
    sch.add_schedule(store, "n", "d", tmp_path / "watch", every="1h")
    pid = _dead_pid()
    owner = f"{socket.gethostname()}:{pid}:abcd1234"
    with store.atomic() as con:
        con.execute("UPDATE schedules SET lock_owner = ?, lock_expires_at = current_timestamp "
                    "+ INTERVAL 1 HOUR", [owner])
    _fake_run(store, "sched-1", kind="schedule", pid=pid, config={"schedule": "n",
                                                                  "owner": owner})
    fresh = Store(tmp_path / "s")
    s = sch.get_schedule(fresh, "n")
    assert (s.lock_owner, s.lock_expires_at) == (None, None)
    assert fresh.get_run("sched-1")["status"] == "failed"


def test_a_killed_exports_folders_are_removed_or_restored(tmp_path):
    out = tmp_path / "out"
    store = Store(tmp_path / "s")
    store.init()
    empty = tmp_path / ".out.aaaa"
    empty.mkdir()
    half = tmp_path / ".out.bbbb"
    half.mkdir()
    (half / "data.jsonl").write_text("{}\n")
    foreign = tmp_path / ".out.cccc"   # somebody put their own file in: kept
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    for i, tmp in enumerate((empty, half, foreign)):
        _fake_run(store, f"export-{i}", kind="export", pid=_dead_pid(),
                  config={"tmp": str(tmp), "out": str(out)})
    Store(tmp_path / "s").query("SELECT 1")
    assert not empty.exists() and not half.exists() and (foreign / "mine.txt").exists()

    # Killed between moving the previous export aside and renaming the new one into place.
    old = tmp_path / ".out.dddd.old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (tmp_path / ".out.dddd").mkdir()
    (tmp_path / ".out.dddd" / "data.jsonl").write_text("{}\n")
    clean_export_leftovers(tmp_path / ".out.dddd", out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert not old.exists() and not (tmp_path / ".out.dddd").exists()
    # Killed after the new export was in place: the old one goes.
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    clean_export_leftovers(tmp_path / ".out.dddd", out)
    assert not old.exists() and out.is_dir()

    assert process_alive(None, None)  # unknown counts as alive


def test_a_killed_force_exports_folders_with_dataset_info_are_cleaned(tmp_path):
    """dataset_info.json was missing from EXPORT_NAMES: a killed `export --force` left its
    temporary folder, and a previous export moved aside to .X.XXXXXXXX.old, for ever."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.jsonl").write_text("{}\n")
    tmp = tmp_path / ".out.eeeeeeee"
    tmp.mkdir()
    for name in ("data.jsonl", "dataset_info.json"):
        (tmp / name).write_text("{}")
    old = tmp_path / ".out.eeeeeeee.old"
    old.mkdir()
    for name in ("data.jsonl", "dataset_info.json", "manifest.json"):
        (old / name).write_text("{}")
    clean_export_leftovers(tmp, out)
    assert not tmp.exists() and not old.exists() and (out / "data.jsonl").exists()
