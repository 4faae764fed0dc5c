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

import random
from pathlib import Path

import pytest

from curator.store import Store
from tests.helpers import write_jsonl
from tests.kill_harness import (
    export_digests,
    kill_server,
    kill_then_rerun,
    question_rows,
    store_contents,
)

PHASES = ("ingest", "score", "select", "export", "worker")
SEED = 15

SERVER = r'''
# Imports once, then runs each job in a forked child that kills itself as its plan says
# (tests/kill_harness.py).
import json
from pathlib import Path

import torch
torch.set_num_threads(1)   # tiny matrices: threads only add contention; set before forking

import curator.schedule as sch
from curator.config import ScoringOptions, StageSpec
from curator.stages import select_stage
from curator.outputs.subsets import export_selection
from curator.pipeline import ingest_once
from curator.scoring.jobs import score_utilities
from curator.store import NotFound, Store
from curator.store.datasets import load_samples
from curator.testing import tiny_loaded_model
from tests.kill_harness import kill_in_transactions, serve

T0 = "2025-01-01T00:00:00+00:00"


def pipeline(job):
    work = Path(job["work"])
    counts, phase = kill_in_transactions(job["plan"])
    sch.SETTLE_SECONDS = 0
    store = Store(job["store"])
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
    Path(job["counts"]).write_text(json.dumps(counts))


serve(pipeline)
'''


def _inputs(work: Path) -> None:
    write_jsonl(work / "v1.jsonl", [*question_rows(0, 10), '{"prompt": "no response"}'])
    write_jsonl(work / "v2.jsonl", question_rows(10, 14) + question_rows(3, 4))
    write_jsonl(work / "incoming" / "a.jsonl", question_rows(20, 26))


def _files(work: Path, store: Path) -> dict:
    """Every export's files by checksum, and the hidden folders beside them (a killed
    export's leftovers), the schedule's among them."""
    [last] = Store(store).query("SELECT last_export FROM schedules")[0]
    # The schedule's export folder is named by its (random) run id.
    folders = {p.name: p for p in (work / "exports").iterdir()} | {"schedule": Path(last)}
    found = export_digests(folders)
    for folder in Path(last).parent.iterdir():
        if folder.name.startswith("."):
            found[f"leftover {folder.name}"] = sorted(p.name for p in folder.iterdir())
    return found


@pytest.mark.slow  # kill -9 at every step: make test-slow
def test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives(tmp_path):
    ref_work, ref_store = tmp_path / "ref", tmp_path / "ref-store"
    work, store = tmp_path / "crash", tmp_path / "crash-store"
    _inputs(ref_work)
    _inputs(work)

    def plans(counts: dict[str, int]) -> list[dict]:
        assert set(counts) == set(PHASES), counts     # every phase writes to the store
        rng = random.Random(SEED)
        return [{"phase": phase, "n": rng.randint(1, counts[phase]),
                 "when": rng.choice(["before", "after"])} for phase in PHASES]

    with kill_server(tmp_path / "server.py", SERVER) as server:
        killed = kill_then_rerun(server, (ref_store, ref_work), (store, work), plans)

    expected = store_contents(ref_store)
    assert expected["running"] == [] and expected["staging"] == [(0,)]
    assert store_contents(store) == expected, killed
    assert _files(work, store) == _files(ref_work, ref_store), killed
    runs = Store(store).query("SELECT count(*) FROM runs WHERE status = 'failed' AND "
                              "error LIKE 'abandoned%'")
    assert runs[0][0] >= 1, killed   # a kill before a run's first commit leaves no run
