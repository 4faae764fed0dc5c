"""Recipes end to end: inputs ingested once by content, every stage recorded in a curate
run, and a rerun that reuses every selection and scores nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from curator.config import ExportSpec, InputSpec, Recipe, StageSpec
from curator.outputs.subsets import load_export, verify_export
from curator.pipeline import ingest_once
from curator.runner import run_recipe
from curator.store.datasets import list_versions
from curator.store.selection_rows import get_mask_record, get_selection, list_selections
from tests.helpers import TINY_OPTIONS

# -- ingest_once ------------------------------------------------------------------------------


def test_ingest_once_skips_the_same_content(store, write_jsonl, pair_rows, tmp_path):
    first = write_jsonl("a.jsonl", pair_rows(5))
    summary = ingest_once(store, first, "d")
    assert summary is not None and summary.version == 1 and summary.n_added == 5
    assert ingest_once(store, first, "d") is None
    renamed = tmp_path / "copies" / "renamed.jsonl"
    renamed.parent.mkdir()
    shutil.copyfile(first, renamed)
    assert ingest_once(store, renamed, "d") is None
    assert [v.version for v in list_versions(store, "d")] == [1]
    # the same file may go into another dataset once
    assert ingest_once(store, renamed, "other").version == 1
    assert ingest_once(store, first, "other") is None
    # new content appends a version by default (the first file made a snapshot)
    second = ingest_once(store, write_jsonl("b.jsonl", pair_rows(3, start=5)), "d")
    assert (second.version, second.mode, second.n_members) == (2, "append", 8)
    third = ingest_once(store, write_jsonl("c.jsonl", pair_rows(2, start=40)), "d",
                        append=False)
    assert (third.version, third.mode, third.n_members) == (3, "snapshot", 2)
    rows = store.query("SELECT dataset, path, version FROM ingested_files ORDER BY dataset, "
                       "version")
    assert rows == [("d", str(Path(first).resolve()), 1), ("d", str(tmp_path / "b.jsonl"), 2),
                    ("d", str(tmp_path / "c.jsonl"), 3), ("other", str(renamed.resolve()), 1)]


def test_ingest_once_killed_after_the_version_does_not_ingest_again(store, write_jsonl,
                                                                      pair_rows, monkeypatch):
    """The version and its file's checksum are one transaction: a crash right after the
    version committed used to leave the file unrecorded, and the rerun made a second
    version of the same file."""
    import curator.ingestion.ingest as ingest_mod

    path = write_jsonl("a.jsonl", pair_rows(4))
    real = ingest_mod.Store.finish_run

    def die(self, run_id, status="done", **kwargs):
        if status == "done":
            raise KeyboardInterrupt  # as if killed once the version was committed
        return real(self, run_id, status, **kwargs)

    monkeypatch.setattr(ingest_mod.Store, "finish_run", die)
    with pytest.raises(KeyboardInterrupt):
        ingest_once(store, path, "d")
    monkeypatch.setattr(ingest_mod.Store, "finish_run", real)
    assert ingest_once(store, path, "d") is None
    assert [v.version for v in list_versions(store, "d")] == [1]


def test_ingest_once_missing_file(store, tmp_path):
    with pytest.raises(ValueError, match="no such input file"):
        ingest_once(store, tmp_path / "nope.jsonl", "d")


# -- run_recipe -------------------------------------------------------------------------------


def small_recipe(v1: str, v2: str, out: Path) -> Recipe:
    return Recipe(
        dataset="d",
        inputs=[InputSpec(v1, append=False), InputSpec(v2)],
        scoring=TINY_OPTIONS,
        stages=[StageSpec(name="base", stage="instruction", budget="25%", version=1),
                StageSpec(name="update", stage="continual", budget="3", version=2,
                          parent="previous", param_budget="10%")],
        export=ExportSpec(format="jsonl", out=str(out)),
    ).validate()


@pytest.mark.slow  # a whole recipe, twice: make test-slow
def test_run_recipe_then_rerun_reuses_everything(store, write_jsonl, pair_rows, tmp_path, lm):
    v1 = write_jsonl("v1.jsonl", pair_rows(16))
    v2 = write_jsonl("v2.jsonl", pair_rows(6, start=16))
    recipe = small_recipe(v1, v2, tmp_path / "exports")
    loads, lines = [], []

    def loader():
        loads.append(1)
        return lm

    report = run_recipe(store, recipe, model_loader=loader, echo=lines.append)
    assert loads == [1]                                   # loaded once, lazily
    assert report.ingested == [v1, v2]
    base, update = report.stages
    assert (base.name, base.stage, base.method, base.function) == (
        "base", "instruction", "delift", "facility_location")
    assert (base.version, base.n_pool, base.n_selected, base.reused) == (1, 16, 4, False)
    # k = 3 pairs for each row the quality prior (on by default) kept
    dropped = get_selection(store, base.selection_id).config["quality"]["n_dropped"]
    assert dropped > 0 and base.pairs_computed == 3 * (16 - dropped) and base.mask is None
    assert (update.stage, update.function, update.version) == ("continual", "flcg", 2)
    assert (update.n_pool, update.n_selected, update.reused) == (6, 3, False)
    assert get_selection(store, update.selection_id).parent == base.selection_id
    assert update.pairs_computed > 0
    assert update.mask["scope_density"] == pytest.approx(0.10, abs=0.01)
    assert get_mask_record(store, update.selection_id)["info"] == update.mask
    for r in report.stages:
        exported = Path(r.export)
        assert exported == (tmp_path / "exports" /
                            f"{r.selection_id}-{r.stage}-delift").resolve()
        assert verify_export(exported) == []
        assert len(load_export(exported).samples) == r.n_selected
    assert (Path(update.export) / "mask.safetensors").exists()
    assert not (Path(base.export) / "mask.safetensors").exists()

    run = store.get_run(report.run_id)
    assert (run["kind"], run["status"], run["done"], run["total"]) == ("curate", "done", 2, 2)
    result = json.loads(run["result"])
    assert [s["selection_id"] for s in result["stages"]] == [base.selection_id,
                                                             update.selection_id]
    assert result["files_new"] == [v1, v2] and result["status"] == "done"
    assert json.loads(run["config"])["dataset"] == "d"

    # graph pairs of each stage, plus pairs scored on demand where greedy ran out
    scored_runs = store.runs(kind="score-utility")
    assert len(scored_runs) >= 3
    lines.clear()
    again = run_recipe(store, recipe, model_loader=loader, echo=lines.append)
    assert again.ingested == []
    assert sum("already ingested" in line for line in lines) == 2
    assert [s.reused for s in again.stages] == [True, True]
    assert [s.selection_id for s in again.stages] == [base.selection_id, update.selection_id]
    assert [s.pairs_computed for s in again.stages] == [0, 0]
    assert again.stages[1].mask == update.mask            # the stored mask, not a new one
    assert len(list_selections(store, "d")) == 2
    assert [r["status"] for r in store.runs(kind="curate")] == ["done", "done"]
    assert len(store.runs(kind="score-utility")) == len(scored_runs)   # nothing scored again


def test_a_failing_stage_marks_the_run_failed(store, write_jsonl, pair_rows, tmp_path, lm):
    v1 = write_jsonl("v1.jsonl", pair_rows(8))
    recipe = Recipe(dataset="d", inputs=[InputSpec(v1)],
                    stages=[StageSpec(name="a", method="random", budget="2"),
                            StageSpec(name="b", stage="continual", method="random",
                                      budget="2", parent="previous")],
                    export=None).validate()
    with pytest.raises(ValueError, match="nothing new in d v1"):
        run_recipe(store, recipe, model_loader=lambda: lm, echo=lambda _: None)
    run = store.runs(kind="curate")[0]
    assert run["status"] == "failed" and "nothing new" in run["error"]
    assert run["done"] == 1
    assert [s["name"] for s in json.loads(run["result"])["stages"]] == ["a"]


def test_model_free_recipe_never_loads_a_model(store, write_jsonl, pair_rows):
    recipe = Recipe(dataset="d", inputs=[InputSpec(write_jsonl("v1.jsonl", pair_rows(8)))],
                    stages=[StageSpec(method="random", budget="3")], export=None).validate()
    report = run_recipe(store, recipe, model_loader=lambda: pytest.fail("model loaded"),
                        echo=lambda _: None)
    assert report.stages[0].name == "1-instruction-random"
    assert report.stages[0].n_selected == 3 and report.stages[0].export is None
