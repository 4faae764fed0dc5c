"""Recipes end to end: ingest new inputs, score what is new, select per stage, write masks,
export. Every run is recorded in the store (config, timings, counts, outputs); rerunning a
recipe after a crash redoes only what did not finish (inputs are skipped by checksum,
scores come from the cache, identical selections are reused)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from curator.config import Recipe, StageSpec
from curator.models import LoadedModel
from curator.pipeline import LazyModel, Pipeline
from curator.report import RunReport, StageReport
from curator.store import Store

# A recipe run's report is the one run report (curator.report); the old names stay.
RecipeReport = RunReport
__all__ = ["RecipeReport", "RunReport", "StageReport", "run_recipe"]


def run_recipe(store: Store, recipe: Recipe, *,
               model_loader: Callable[[], LoadedModel] | None = None,
               export_root: Path | None = None, progress: bool = False,
               echo: Callable[[str], None] = print) -> RunReport:
    """Run every step of ``recipe``; returns what each stage did."""
    started = time.monotonic()
    store.init()
    pipe = Pipeline(store, LazyModel(recipe.model, dtype=recipe.scoring.dtype,
                                     loader=model_loader, echo=echo),
                    recipe.scoring, echo=echo, progress=progress)
    run_id = store.start_run("curate", recipe.dataset, recipe.to_dict(),
                             total=len(recipe.stages))
    report = RunReport(run_id, recipe.dataset, kind="curate")
    try:
        for item in recipe.inputs:
            target_ds = item.dataset or recipe.dataset
            summary = pipe.ingest_once(item.path, target_ds, append=item.append)
            if summary is None:
                report.files_seen += 1
                echo(f"input {item.path}: already ingested into {target_ds}")
            else:
                report.files_new.append(item.path)
                echo(f"input {item.path}: {target_ds} v{summary.version}, "
                     f"{summary.n_added} added, {summary.n_quarantined} quarantined")
        previous: str | None = None
        by_name: dict[str, str] = {}
        for i, spec in enumerate(recipe.stages):
            name = spec.name or f"{i + 1}-{spec.stage}-{spec.method}"
            echo(f"\n[{name}] {spec.stage} stage, {spec.method}, budget {spec.budget}")
            t0 = time.monotonic()
            outcome = pipe.select(recipe.dataset, _with_parent(spec, previous, by_name),
                                  previous_selection=previous)
            stage = StageReport.from_outcome(name, outcome, time.monotonic() - t0)
            for note in outcome.notes:
                echo(f"  note: {note}")
            stage.mask = pipe.stage_mask(spec, outcome.selection_id)
            if recipe.export is not None:
                from curator.outputs.subsets import export_selection

                root = export_root or Path(recipe.export.out)
                out = root / f"{outcome.selection_id}-{spec.stage}-{spec.method}"
                result = export_selection(store, outcome.selection_id, out,
                                          recipe.export.format, force=True)
                stage.export = str(result.path)
            stage.seconds = time.monotonic() - t0
            report.stages.append(stage)
            previous = by_name[name] = outcome.selection_id
            store.update_run(run_id, done=i + 1)
    except BaseException as exc:
        report.status, report.error = "failed", str(exc) or type(exc).__name__
        report.seconds["total"] = round(time.monotonic() - started, 3)
        store.finish_run(run_id, "failed", error=report.error, result=report.to_dict())
        raise
    report.status = "done"
    report.seconds["total"] = round(time.monotonic() - started, 3)
    store.finish_run(run_id, "done", result=report.to_dict())
    return report


def _with_parent(spec: StageSpec, previous: str | None, by_name: dict[str, str]) -> StageSpec:
    """Resolve ``parent: previous`` and ``parent: <stage name>`` to selection ids."""
    from dataclasses import replace

    if spec.stage != "continual":
        return spec
    if spec.parent == "previous" and previous:
        return replace(spec, parent=previous)
    if spec.parent in by_name:
        return replace(spec, parent=by_name[spec.parent])
    return spec
