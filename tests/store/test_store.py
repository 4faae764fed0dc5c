"""The Store: migrations, transactions, runs, and two processes sharing one file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import duckdb
import pytest

from curator.store import DB_FILENAME, NotFound, SchemaTooNew, Store, StoreError, StoreLocked
from curator.store.schema import LATEST, MIGRATIONS

# The foundation's tables; later migrations add more.
TABLES = {"datasets", "ingest_staging", "models", "quarantine", "runs", "samples",
          "schema_version", "version_members", "versions"}


def tables(store: Store) -> set[str]:
    return {r[0] for r in store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}


# -- migrations -----------------------------------------------------------------------------


def test_migrations_are_numbered_in_order():
    numbers = [m[0] for m in MIGRATIONS]
    assert numbers == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST == numbers[-1]


def test_fresh_store_gets_every_migration(tmp_path):
    store = Store(tmp_path / "s")
    assert not store.exists
    store.init()
    assert store.exists and (tmp_path / "s" / DB_FILENAME).is_file()
    assert (tmp_path / "s" / "artifacts").is_dir()
    assert tables(store) >= TABLES
    assert store.query("SELECT version, name FROM schema_version ORDER BY version") == \
        [(n, name) for n, name, _ in MIGRATIONS]
    assert store.schema_version() == LATEST


def test_an_empty_duckdb_file_is_migrated(tmp_path):
    (tmp_path / "s").mkdir()
    duckdb.connect(str(tmp_path / "s" / DB_FILENAME)).close()  # a valid file without tables
    store = Store(tmp_path / "s", create=False)
    assert tables(store) >= TABLES
    assert store.schema_version() == LATEST


def test_reopening_applies_nothing_twice(tmp_path):
    Store(tmp_path / "s").init()
    again = Store(tmp_path / "s")
    again.init()
    assert again.query("SELECT count(*), count(DISTINCT version) FROM schema_version") == \
        [(len(MIGRATIONS), len(MIGRATIONS))]


def test_a_newer_schema_is_refused(tmp_path):
    Store(tmp_path / "s").init()
    con = duckdb.connect(str(tmp_path / "s" / DB_FILENAME))
    con.execute("INSERT INTO schema_version (version, name) VALUES (?, 'from the future')",
                [LATEST + 1])
    con.close()
    with pytest.raises(SchemaTooNew) as info:
        Store(tmp_path / "s").query("SELECT 1")
    assert str(info.value) == (f"store {tmp_path / 's'} has schema version {LATEST + 1}, "
                               f"this curator knows up to {LATEST}: upgrade curator")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / DB_FILENAME).write_bytes(b"")
    with pytest.raises(StoreError, match=r"^cannot open store .*curator\.duckdb: .*not a valid "
                                         r"DuckDB database file"):
        Store(tmp_path / "s").init()


def test_opening_a_missing_store_without_create(tmp_path):
    with pytest.raises(NotFound) as info:
        Store(tmp_path / "nope", create=False)
    assert str(info.value) == f"no curator store at {tmp_path / 'nope'} (create one with " \
                              "`curator init`)"


def test_default_path_and_lock_timeout_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_STORE", str(tmp_path / "env-store"))
    monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", "2.5")
    store = Store()
    assert (store.path, store.lock_timeout) == (tmp_path / "env-store", 2.5)
    assert Store(tmp_path, lock_timeout=1).lock_timeout == 1


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e999", " "])
def test_a_bad_lock_timeout_names_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", value)
    if not value.strip():  # empty: the default
        assert Store(tmp_path).lock_timeout == 60
        return
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert str(info.value) == ("CURATOR_LOCK_TIMEOUT must be a non-negative number of "
                               f"seconds, got {value!r}")
    monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", "0")
    assert Store(tmp_path).lock_timeout == 0


def _store_at_schema(path, last: int) -> None:
    """A store file that ran migrations 1..last only, as an older curator left it."""
    path.mkdir()
    con = duckdb.connect(str(path / DB_FILENAME))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT, "
                "applied_at TIMESTAMP DEFAULT current_timestamp)")
    for number, name, sql in MIGRATIONS[:last]:
        con.execute(sql)
        con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [number, name])
    con.close()


def key_constraints(store: Store, table: str) -> list[str]:
    return [r[0] for r in store.query(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = ? AND "
        "constraint_type IN ('PRIMARY KEY', 'UNIQUE')", [table])]


def test_the_ingest_tables_lose_their_in_memory_keys_and_keep_their_rows(tmp_path, write_jsonl):
    from curator.ingestion.ingest import ingest
    from curator.records import sample_id_for
    from curator.store.datasets import load_samples

    path = tmp_path / "old"
    _store_at_schema(path, 5)
    messages = [{"role": "user", "content": "pa"}, {"role": "assistant", "content": "ra"}]
    a = sample_id_for(messages)
    con = duckdb.connect(str(path / DB_FILENAME))
    con.execute("INSERT INTO datasets (name) VALUES ('d')")
    con.execute("INSERT INTO samples (sample_id, messages, prompt, response, n_chars) VALUES "
                "(?, ?, 'pa', 'ra', 4)", [a, json.dumps(messages)])
    con.execute("INSERT INTO version_members VALUES ('d', 1, ?, '{\"k\": 1}', 'f', 3)", [a])
    con.execute("INSERT INTO versions (dataset, version, mode, source, n_read, n_accepted, "
                "n_duplicates, n_quarantined, n_added, n_removed, n_unchanged, n_members) "
                "VALUES ('d', 1, 'snapshot', 'f', 1, 1, 0, 0, 1, 0, 0, 1)")
    con.execute("INSERT INTO ingest_staging VALUES ('run-x', ?, NULL, 'f', 1)", [a])
    created = con.execute("SELECT created_at FROM samples").fetchone()[0]
    con.close()

    store = Store(path, create=False)
    assert store.schema_version() == LATEST
    for table in ("samples", "version_members", "ingest_staging"):
        assert key_constraints(store, table) == []
    assert key_constraints(store, "versions") == ["PRIMARY KEY"]
    assert store.query("SELECT sample_id, prompt, n_chars, created_at FROM samples") == \
        [(a, "pa", 4, created)]
    assert store.query("SELECT * FROM version_members") == [("d", 1, a, '{"k": 1}', "f", 3)]
    assert store.query("SELECT run_id, sample_id FROM ingest_staging") == [("run-x", a)]
    with pytest.raises(duckdb.ConstraintException):  # NOT NULL and defaults survive the copy
        store.query("INSERT INTO samples (sample_id, messages, prompt, response) "
                    "VALUES ('b', '[]', 'p', 'r')")
    assert store.query("SELECT count(*) FROM samples") == [(1,)]
    [sample] = load_samples(store, "d", 1)
    assert (sample.sample_id, sample.prompt, sample.metadata) == (a, "pa", {"k": 1})

    # Ingest on the migrated store still stores each sample once.
    rows = [{"prompt": "pa", "response": "ra"}, {"prompt": "pb", "response": "rb"}]
    s = ingest(store, write_jsonl("v2.jsonl", rows + rows), "d", append=True, batch_size=3)
    assert (s.version, s.n_accepted, s.n_duplicates, s.n_unchanged, s.n_added, s.n_members) \
        == (2, 2, 2, 1, 1, 2)
    assert store.query("SELECT count(*), count(DISTINCT sample_id) FROM samples") == [(2, 2)]


def test_connections_do_not_vacuum_at_checkpoints(store):
    # DuckDB's vacuum merged the row groups of batched writes in memory at every close.
    assert store.query("SELECT current_setting('max_vacuum_tasks')") == [(0,)]


# -- transactions ---------------------------------------------------------------------------


def test_atomic_commits_or_rolls_back_everything(store):
    with store.atomic() as con:
        con.execute("INSERT INTO datasets (name) VALUES ('a')")
        with store.atomic() as inner:  # nested: joins the outer transaction
            assert inner is con
            inner.execute("INSERT INTO datasets (name) VALUES ('b')")
    with pytest.raises(RuntimeError), store.atomic() as con:
        con.execute("INSERT INTO datasets (name) VALUES ('c')")
        with store.atomic() as inner:
            inner.execute("INSERT INTO datasets (name) VALUES ('d')")
        raise RuntimeError("boom")
    assert store.query("SELECT name FROM datasets ORDER BY name") == [("a",), ("b",)]


def test_a_failing_statement_rolls_back_the_block(store):
    with pytest.raises(duckdb.ConstraintException), store.atomic() as con:
        con.execute("INSERT INTO datasets (name) VALUES ('x')")
        con.execute("INSERT INTO datasets (name) VALUES ('x')")
    assert store.query("SELECT count(*) FROM datasets") == [(0,)]
    with store.atomic() as con:  # the store is usable afterwards
        con.execute("INSERT INTO datasets (name) VALUES ('x')")
    assert store.query_dicts("SELECT name FROM datasets") == [{"name": "x"}]


def test_connect_reuses_the_connection_when_nested_and_closes_it_after(store):
    with store.connect() as a, store.connect() as b:
        assert a is b
    with pytest.raises(duckdb.ConnectionException):
        a.execute("SELECT 1")


# -- runs -----------------------------------------------------------------------------------


def test_run_lifecycle(store):
    run_id = store.start_run("ingest", "d", {"source": "x"}, total=10, run_id="r1")
    assert run_id == "r1"
    run = store.get_run("r1")
    assert (run["kind"], run["dataset"], run["status"], run["done"], run["total"],
            json.loads(run["config"]), run["finished_at"]) == \
        ("ingest", "d", "running", 0, 10, {"source": "x"}, None)
    store.update_run("r1", done=4)
    store.update_run("r1", total=12)
    assert (store.get_run("r1")["done"], store.get_run("r1")["total"]) == (4, 12)
    store.finish_run("r1", "done", result={"version": 1})
    run = store.get_run("r1")
    assert (run["status"], json.loads(run["result"]), run["error"]) == ("done", {"version": 1}, None)
    assert run["finished_at"] is not None
    store.finish_run(store.start_run("score"), "failed", error="oom")
    assert [r["kind"] for r in store.runs(kind="score")] == ["score"]
    assert store.runs(kind="score")[0]["error"] == "oom"
    auto = store.start_run("ingest")
    assert auto.startswith("ingest-") and len(auto) == len("ingest-20250101-120000-abcdef")
    with pytest.raises(ValueError, match="unknown run status 'paused'"):
        store.finish_run("r1", "paused")
    with pytest.raises(NotFound, match="no run 'nope'"):
        store.get_run("nope")


# -- two processes --------------------------------------------------------------------------

READER = """
import json, sys, time
from curator.store import Store
store = Store(sys.argv[1], lock_timeout=20)
print("ready", flush=True)
seen = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    rows = store.query("SELECT status, done FROM runs WHERE kind = 'ingest'")
    versions = store.query("SELECT count(*) FROM versions")[0][0]
    seen.append([rows[0] if rows else None, versions])
    if rows and rows[0][0] != "running":
        break
    time.sleep(0.01)
print(json.dumps(seen), flush=True)
"""

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()   # hold the file until the test says so
con.close()
"""


@pytest.mark.slow  # two processes: make test-slow
def test_a_second_process_reads_between_the_writers_transactions(store, write_jsonl):
    from curator.ingestion.ingest import ingest

    store.init()
    source = write_jsonl("a.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(200)])
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        # A short pause after each committed batch, outside any transaction, as a long job
        # computing its next batch would make. (0.2 s once proved too short a window on a
        # loaded machine: the reader's lock backoff, up to 1 s, can step over it.)
        summary = ingest(store, source, "d", batch_size=20, progress=lambda n: time.sleep(0.4))
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert summary.n_accepted == 200
    seen = json.loads(out)
    # The reader saw the ingest in the middle: running, some batches done, no version yet.
    middle = [done for (run, versions) in seen if run and run[0] == "running"
              for done in [run[1]] if 0 < done < 200 and versions == 0]
    assert middle, seen
    assert seen[-1] == [["done", 200], 1]


def test_a_writer_that_finds_the_store_held_too_long_fails_clearly(store, monkeypatch):
    store.init()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        blocked = Store(store.path, lock_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreLocked) as info:
            blocked.query("SELECT 1")
        waited = time.monotonic() - started
        assert str(info.value) == (f"store {store.path} is busy: another process has held it "
                                   "for more than 0.5 s (set CURATOR_LOCK_TIMEOUT to wait longer)")
        assert 0.5 <= waited < 5
        monkeypatch.setenv("CURATOR_LOCK_TIMEOUT", "0.3")
        with pytest.raises(StoreLocked, match="for more than 0.3 s"):
            Store(store.path).init()
        holder.stdin.write("release\n")
        holder.stdin.flush()
        holder.wait(timeout=10)
    finally:
        holder.kill()
    # Once released, the store opens again.
    assert Store(store.path, lock_timeout=5).schema_version() == LATEST


def test_a_waiting_writer_gets_in_once_the_holder_lets_go(store):
    store.init()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        releaser = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; time.sleep(0.5); sys.stdout.write('release\\n')"],
            stdout=holder.stdin)
        started = time.monotonic()
        with Store(store.path, lock_timeout=20).atomic() as con:  # retries with backoff
            con.execute("INSERT INTO datasets (name) VALUES ('late')")
        assert 0.4 < time.monotonic() - started < 20
        holder.wait(timeout=10)
        releaser.wait(timeout=10)
    finally:
        holder.kill()
    assert store.query("SELECT name FROM datasets") == [("late",)]
