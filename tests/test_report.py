"""The one run report (curator.report): built once per stage, stored and read back, and
worded once for the CLI, the app, the worker's log and the demo."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from curator.report import RunReport, StageReport, mask_words, table_lines
from curator.stages import StageOutcome
from curator.store.selection_rows import SelectionRecord

MASK = {"overall": {"selected": 1234, "total": 56789, "density": 1234 / 56789},
        "scope_density": 0.1}


def outcome(**record) -> StageOutcome:
    rec = SelectionRecord(**{"dataset": "d", "version": 2, "stage": "continual",
                             "method": "delift", "budget": "30%", "n_pool": 10,
                             "n_selected": 3, "function": "flcg", "objective": 4.25,
                             "parent": "sel-0001",
                             "config": {"quality": {"n_dropped": 2, "dropped": {"a": 1, "b": 1}},
                                        "zero_gain_picks": 1}, **record})
    runs = [SimpleNamespace(n_computed=30, n_reused=6), SimpleNamespace(n_computed=4,
                                                                        n_reused=0)]
    return StageOutcome("sel-0002", rec, ["x", "y", "z"], np.zeros(3), runs, ["a note"])


def test_a_stage_report_is_built_from_the_outcome():
    s = StageReport.from_outcome("update", outcome(), 2.5)
    assert (s.name, s.stage, s.method, s.function, s.version, s.parent) == (
        "update", "continual", "delift", "flcg", 2, "sel-0001")
    assert (s.selection_id, s.n_pool, s.n_selected, s.objective, s.seconds, s.reused) == (
        "sel-0002", 10, 3, 4.25, 2.5, False)
    assert (s.pairs_computed, s.pairs_reused, s.prior_dropped, s.zero_gain_picks) == (
        34, 6, 2, 1)
    assert s.notes == ["a note"] and s.mask is None and s.export is None
    # no prior, no set function: None, not 0
    plain = StageReport.from_outcome("r", outcome(method="random", function=None,
                                                  objective=None, config={}), 0.1)
    assert (plain.prior_dropped, plain.zero_gain_picks) == (None, None)


def test_stage_words():
    s = StageReport.from_outcome("update", outcome(), 2.5)
    s.mask, s.export = MASK, "/x/sel-0002-continual-delift"
    assert s.summary() == "update: continual selection sel-0002 (parent sel-0001): 3 of 10"
    assert s.line() == (
        "update: continual selection sel-0002 (parent sel-0001): 3 of 10; objective 4.250; "
        "pairs scored 34, reused 6; prior left out 2; mask 1,234 of 56,789 parameters "
        "(2.17% of the model, 10.0% of its linear layers); 2.5 s -> "
        "/x/sel-0002-continual-delift")
    # a schedule's stage is named by its stage: said once; a reused one says so
    once = StageReport("continual", "continual", "sel-0004", n_pool=5, n_selected=2,
                       reused=True)
    assert once.summary() == "continual selection sel-0004: 2 of 5 (reused)"
    assert mask_words({}) == "stored"


def test_a_recipe_run_in_lines_stored_and_read_back():
    stages = [StageReport("base", "instruction", "sel-0001", method="random", version=1,
                          n_pool=16, n_selected=4, seconds=0.25),
              StageReport.from_outcome("update", outcome(), 2.5)]
    run = RunReport("run-1", "d", status="done", files_new=["v1.jsonl"], files_seen=1,
                    stages=stages, seconds={"total": 3.0})
    assert run.ingested == ["v1.jsonl"] and run.selection_id == "sel-0002"
    assert run.lines() == [
        "run run-1: done in 3.0 s",
        "  files: 1 new, 1 already ingested, 0 quarantined, 0 still being written",
        "  base: instruction selection sel-0001: 4 of 16; 0.2 s",
        "  update: continual selection sel-0002 (parent sel-0001): 3 of 10; objective "
        "4.250; pairs scored 34, reused 6; prior left out 2; 2.5 s"]
    assert run.summary() == ("1 new file; base: instruction selection sel-0001: 4 of 16; "
                             "update: continual selection sel-0002 (parent sel-0001): 3 of 10")
    again = RunReport.from_dict(run.to_dict())
    assert again == run


def test_a_scheduled_run_in_words():
    run = RunReport("sched-1", "nightly", kind="schedule", status="done", trigger="due",
                    files_new=["/in/a.jsonl"], files_bad=[{"path": "/in/b.jsonl",
                                                           "reason": "empty file"}],
                    version=2, n_quarantined_rows=1, parent="sel-0001",
                    stages=[StageReport("continual", "continual", "sel-0002",
                                        parent="sel-0001", n_pool=10, n_selected=3,
                                        seconds=1.0)],
                    export="/x/exports/nightly/sched-1")
    what = ("1 new file -> v2; 1 bad file quarantined: b.jsonl (empty file); continual "
            "selection sel-0002 (parent sel-0001): 3 of 10; export /x/exports/nightly/sched-1")
    assert run.summary() == what
    assert run.headline() == f"nightly: run sched-1 done: {what}"
    assert run.lines() == [
        "run sched-1: done",
        "  files: 1 new, 0 already ingested, 1 quarantined, 0 still being written",
        "  quarantined /in/b.jsonl: empty file",
        "  new version: v2 (1 row quarantined)",
        "  continual selection sel-0002 (parent sel-0001): 3 of 10; 1.0 s",
        "  export: /x/exports/nightly/sched-1"]
    failed = RunReport("sched-2", "nightly", kind="schedule", status="failed",
                       error="disk full")
    assert failed.summary() == "failed: disk full"
    assert failed.headline() == "nightly: run sched-2 failed: disk full"
    assert RunReport("sched-3", "nightly", kind="schedule", status="done").summary() == \
        "nothing new"
    assert RunReport("sched-4", "nightly", kind="schedule").summary() == "running"


def test_results_stored_before_the_report_read_back():
    # a schedule's outcome, its selection's fields flat (as a history row holds it)
    old = {"run_id": "sched-1", "schedule": "nightly", "status": "done", "trigger": "due",
           "files_new": ["/in/a.jsonl"], "files_seen": 0, "files_waiting": [],
           "files_bad": [], "version": 2, "pool_version": 2, "resumed": None,
           "n_new_samples": 40, "n_quarantined_rows": 0, "stage": "continual",
           "selection_id": "sel-0007", "parent": "sel-0003", "n_selected": 12,
           "reused_selection": False, "pairs_computed": 5, "pairs_reused": 1, "mask": True,
           "export": "/x", "note": None, "error": None, "seconds": {"total": 1.5},
           "owner": "host:1:abc", "dataset": "d"}
    run = RunReport.from_dict(old)
    assert (run.name, run.kind, run.selection_id, run.parent) == (
        "nightly", "schedule", "sel-0007", "sel-0003")
    assert run.summary() == ("1 new file -> v2; continual selection sel-0007 (parent "
                             "sel-0003): 12 of 40; export /x")
    assert run.stages[0].line() == ("continual selection sel-0007 (parent sel-0003): 12 of "
                                    "40; pairs scored 5, reused 1; mask stored; 0.0 s")
    # a recipe's result: its inputs as "ingested", its time a number
    recipe = RunReport.from_dict({"run_id": "r", "ingested": ["v1.jsonl"], "seconds": 3.5,
                                  "stages": [{"name": "base", "stage": "instruction",
                                              "selection_id": "sel-0001", "n_pool": 16,
                                              "n_selected": 4, "method": "random"}]})
    assert recipe.files_new == ["v1.jsonl"] and recipe.total_seconds == 3.5
    assert recipe.stages[0].summary() == "base: instruction selection sel-0001: 4 of 16"


def test_the_stage_table_takes_extra_columns():
    run = RunReport("r", stages=[
        StageReport("instruction", "instruction", "sel-0001", version=1, n_pool=16,
                    n_selected=5, objective=12.5, seconds=3.25, pairs_computed=48,
                    zero_gain_picks=0, prior_dropped=2),
        StageReport("continual-v2", "continual", "sel-0002", version=2, n_pool=8,
                    n_selected=2, seconds=0.5)])
    columns = ["stage", "ver", "selection", "pool", "picked", "objective", "zero gain",
               "noisy", "prior left out", "pairs", "time"]
    lines = run.stage_table(columns, {"instruction": {"noisy": "1 (6%)",
                                                      "prior left out": "2 (1 noisy)"}})
    assert lines == [
        "stage        ver selection pool picked objective zero gain  noisy prior left out "
        "pairs time",
        "instruction    1 sel-0001    16      5     12.50         0 1 (6%)    2 (1 noisy) "
        "   48 3.2s",
        "continual-v2   2 sel-0002     8      2         -         -                     - "
        "    0 0.5s"]
    assert table_lines([]) == [""]
