"""kill -9 at seeded random moments of ingest, scoring, selection, export and a worker run:
after a rerun the store holds the same data and the export folders the same files as after
one uninterrupted run, and nothing of the killed processes is left behind.

A process runs the whole pipeline on a tiny model (``curator.testing``). A kill comes
from the process itself, SIGKILL at the n-th store transaction of a phase, just before or
just after its commit, with n drawn by a seeded generator from the number of transactions
the phase takes in the uninterrupted run: kill -9, at the moments where state changes.
The kills are chained (each process resumes what the one before left and is itself killed
later on), and each process is a fork of one that imported torch once, so five kills and
the reference cost one import.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from curator.store import Store

PHASES = ("ingest", "score", "select", "export", "worker")
SEED = 15

SERVER = r'''
# Imports once, then runs each job (one JSON line on stdin) in a forked child and answers
# with the child's exit status: seven imports of torch would cost more than the test.
import contextlib, json, os, signal, sys, traceback
from pathlib import Path

import torch
torch.set_num_threads(1)   # tiny matrices: threads only add contention; set before forking

import curator.schedule as sch
from curator.config import ScoringOptions, StageSpec
from curator.stages import select_stage
from curator.export import export_selection
from curator.pipeline import ingest_once
from curator.scoring.jobs import score_utilities
from curator.store import NotFound, Store
from curator.store.datasets import load_samples
from curator.testing import tiny_loaded_model

REAL_ATOMIC = Store.atomic
T0 = "2025-01-01T00:00:00+00:00"


def pipeline(store_path, work, plan, counts_file):
    kill_phase, kill_n, kill_when = plan.get("phase"), plan.get("n"), plan.get("when")
    counts, phase = {}, [None]

    @contextlib.contextmanager
    def atomic(self):
        outer = not getattr(self._local, "in_tx", False)
        with REAL_ATOMIC(self) as con:
            yield con
            if outer:
                counts[phase[0]] = n = counts.get(phase[0], 0) + 1
                if phase[0] == kill_phase and n == kill_n and kill_when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)   # not committed
        if outer and phase[0] == kill_phase and counts[phase[0]] == kill_n \
                and kill_when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    Store.atomic = atomic
    sch.SETTLE_SECONDS = 0
    store = Store(store_path)
    lm = tiny_loaded_model("llama")
    options = ScoringOptions(k=3, batch_size=4, max_length=96, hubs=0)
    stages = [StageSpec(name="v1", stage="instruction", budget="4", version=1),
              StageSpec(name="v2", stage="instruction", budget="5", version=2)]
    phase[0] = "ingest"
    ingest_once(store, work / "v1.jsonl", "d", append=False)
    ingest_once(store, work / "v2.jsonl", "d")
    phase[0] = "score"
    for version in (1, 2):
        pool = load_samples(store, "d", version)
        score_utilities(store, lm, pool, pool, options, dataset="d")
    phase[0] = "select"
    selected = [select_stage(store, "d", spec, lm=lm, options=options).selection_id
                for spec in stages]
    phase[0] = "export"
    for sid in selected:
        export_selection(store, sid, work / "exports" / sid, force=True)
    phase[0] = "worker"
    try:
        sch.get_schedule(store, "n")
    except NotFound:
        sch.add_schedule(store, "n", "w", work / "incoming", every="1h",
                         recipe={"stages": [{"stage": "continual", "method": "random",
                                             "budget": "50%"}]},
                         clock=sch.ManualClock(T0))
    sch.worker(store, once=True, clock=sch.ManualClock(T0), model_loader=lambda: lm)
    Path(counts_file).write_text(json.dumps(counts))


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            pipeline(job["store"], Path(job["work"]), job["plan"], job["counts"])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps({"rc": rc}), flush=True)
'''


def _inputs(work: Path) -> None:
    def rows(lo, hi):
        return "".join(json.dumps({"prompt": f"question {i}: what is {i} times 7?",
                                   "response": f"{i * 7}", "n": i}) + "\n"
                       for i in range(lo, hi))
    work.mkdir()
    (work / "v1.jsonl").write_text(rows(0, 10) + '{"prompt": "no response"}\n')
    (work / "v2.jsonl").write_text(rows(10, 14) + rows(3, 4))
    (work / "incoming").mkdir()
    (work / "incoming" / "a.jsonl").write_text(rows(20, 26))


class _Server:
    """The job server: one process with the imports done; each job runs in a fork of it."""

    def __init__(self, script: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)

    def run(self, store: Path, work: Path, plan: dict) -> int:
        job = {"store": str(store), "work": str(work), "plan": plan,
               "counts": str(work / "counts.json")}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.close()
        return json.loads(line)["rc"]

    def close(self) -> str:
        """Stop the server; returns what it wrote to stderr (tracebacks of failed jobs)."""
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            err = self.proc.stderr.read()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()
        return err[-3000:]


def _contents(store_path: Path) -> dict:
    """What a rerun must reproduce: the data, the scores, the selections and the schedule's
    state; run ids, timestamps and run-named folders aside."""
    store = Store(store_path)
    q = store.query
    members = q("SELECT dataset, version, sample_id, metadata, source_file, source_line "
                "FROM version_members ORDER BY ALL")
    return {
        "versions": q("SELECT dataset, version, parent, mode, n_read, n_accepted, n_duplicates,"
                      " n_quarantined, n_added, n_removed, n_unchanged, n_members FROM versions"
                      " ORDER BY ALL"),
        "members": sorted((d, v, s, m, Path(f).name, n) for d, v, s, m, f, n in members),
        "samples": q("SELECT sample_id, messages, prompt, response FROM samples ORDER BY ALL"),
        "quarantine": sorted((d, v, Path(f).name, n, r, raw) for d, v, f, n, r, raw in q(
            "SELECT dataset, version, source_file, line, reason, raw FROM quarantine")),
        "embeddings": q("SELECT count(*), count(DISTINCT sample_id) FROM embeddings"),
        "utilities": [(t, e, m, c, round(u, 4) if u is not None else None, v) for t, e, m, c, u, v
                      in q("SELECT target_id, example_id, model, config, utility, valid "
                           "FROM utilities ORDER BY ALL")],
        "selections": [(*r[:-1], round(r[-1], 4) if r[-1] is not None else None) for r in q(
            "SELECT selection_id, dataset, version, stage, method, function, budget, n_pool, "
            "n_selected, model, parent, objective FROM selections ORDER BY ALL")],
        "selection_members": q("SELECT selection_id, layer, sample_id, rank FROM "
                               "selection_members ORDER BY ALL"),
        "ingested_files": sorted((d, s, Path(p).name, v) for d, s, p, v in q(
            "SELECT dataset, sha256, path, version FROM ingested_files")),
        "schedule": [(n, s, f, e, x is not None, o) for n, s, f, e, x, o in q(
            "SELECT name, last_selection_id, failures, last_error, last_export, lock_owner "
            "FROM schedules")],
        "staging": q("SELECT count(*) FROM ingest_staging"),
        "running": q("SELECT kind FROM runs WHERE status = 'running'"),
    }


def _files(work: Path, store: Path) -> dict:
    """Every export's files by checksum (the manifest without its time and digest), and the
    hidden folders beside them (a killed export's leftovers)."""
    from curator.digests import sha256_file

    found = {}
    [last] = Store(store).query("SELECT last_export FROM schedules")[0]
    # The schedule's export folder is named by its (random) run id.
    folders = {p.name: p for p in (work / "exports").iterdir()} | {"schedule": Path(last)}
    for name, folder in sorted(folders.items()):
        if name.startswith("."):
            found[f"leftover {name}"] = sorted(p.name for p in folder.iterdir())
            continue
        for f in sorted(folder.rglob("*")):
            key = f"{name}/{f.relative_to(folder)}"
            if f.name == "manifest.json":
                manifest = json.loads(f.read_text())
                for volatile in ("created_at", "manifest_sha256"):
                    manifest.pop(volatile)
                found[key] = manifest
            elif f.is_file():
                found[key] = sha256_file(f)
    for folder in Path(last).parent.iterdir():
        if folder.name.startswith("."):
            found[f"leftover {folder.name}"] = sorted(p.name for p in folder.iterdir())
    return found


@pytest.mark.slow  # kill -9 at every step: make test-slow
def test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = _Server(script)
    try:
        ref_work, ref_store = tmp_path / "ref", tmp_path / "ref-store"
        _inputs(ref_work)
        assert server.run(ref_store, ref_work, {}) == 0
        counts = json.loads((ref_work / "counts.json").read_text())
        assert set(counts) == set(PHASES), counts     # every phase writes to the store

        rng = random.Random(SEED)
        work, store = tmp_path / "crash", tmp_path / "crash-store"
        _inputs(work)
        killed = []
        for phase in PHASES:
            plan = {"phase": phase, "n": rng.randint(1, counts[phase]),
                    "when": rng.choice(["before", "after"])}
            killed.append(plan)
            assert server.run(store, work, plan) == -signal.SIGKILL, killed
        assert server.run(store, work, {}) == 0, killed
    except AssertionError:
        print(server.close())
        raise
    server.close()

    expected = _contents(ref_store)
    assert expected["running"] == [] and expected["staging"] == [(0,)]
    assert _contents(store) == expected, killed
    assert _files(work, store) == _files(ref_work, ref_store), killed
    runs = Store(store).query("SELECT count(*) FROM runs WHERE status = 'failed' AND "
                              "error LIKE 'abandoned%'")
    assert runs[0][0] >= 1, killed   # a kill before a run's first commit leaves no run
