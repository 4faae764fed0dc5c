"""Recipes end to end: ingest new inputs, score what is new, select per stage, write masks,
export. Every run is recorded in the store (config, timings, counts, outputs); rerunning a
recipe after a crash redoes only what did not finish (inputs are skipped by checksum,
scores come from the cache, identical selections are reused)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curator.config import Recipe, StageSpec
from curator.curate import StageOutcome, select_stage
from curator.export import sha256_file
from curator.ingest import IngestSummary, ingest
from curator.models import LoadedModel
from curator.store import Store


@dataclass
class StageReport:
    name: str
    stage: str
    method: str
    function: str | None
    version: int
    selection_id: str
    n_pool: int
    n_selected: int
    objective: float | None
    seconds: float
    reused: bool
    pairs_computed: int = 0
    pairs_reused: int = 0
    mask: dict[str, Any] | None = None
    export: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RecipeReport:
    run_id: str
    dataset: str
    ingested: list[str]
    stages: list[StageReport]
    seconds: float


def ingest_once(store: Store, path: str | Path, dataset: str, append: bool = True,
                **kwargs: Any) -> IngestSummary | None:
    """Ingest a file unless a file with the same content was ingested into ``dataset``
    before (a renamed or re-copied file is not ingested twice). None when skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such input file: {path}")
    digest = sha256_file(path)
    store.init()
    if store.query("SELECT 1 FROM ingested_files WHERE dataset = ? AND sha256 = ?",
                   [dataset, digest]):
        return None
    has_versions = bool(store.query("SELECT 1 FROM versions WHERE dataset = ?", [dataset]))
    # The file is recorded with the version, in one transaction: killed in between, a
    # rerun would have ingested it again as another version.
    return ingest(store, str(path), dataset, append=append and has_versions,
                  record_file=(digest, str(path.resolve())), **kwargs)


def run_recipe(store: Store, recipe: Recipe, *,
               model_loader: Callable[[], LoadedModel] | None = None,
               export_root: Path | None = None, progress: bool = False,
               echo: Callable[[str], None] = print) -> RecipeReport:
    """Run every step of ``recipe``; returns what each stage did."""
    from curator.gradient_stages import mask_for_selection
    from curator.models import load_model

    started = time.monotonic()
    store.init()
    cache: list[LoadedModel] = []

    def lm() -> LoadedModel:
        if not cache:
            if model_loader is None:
                echo(f"loading model {recipe.model or 'default (SmolLM2-135M-Instruct)'}")
            cache.append(model_loader() if model_loader else
                         load_model(recipe.model, dtype=recipe.scoring.dtype))
        return cache[0]

    run_id = store.start_run("curate", recipe.dataset, recipe.to_dict(),
                             total=len(recipe.stages))
    ingested: list[str] = []
    reports: list[StageReport] = []
    try:
        for item in recipe.inputs:
            target_ds = item.dataset or recipe.dataset
            summary = ingest_once(store, item.path, target_ds, append=item.append)
            if summary is None:
                echo(f"input {item.path}: already ingested into {target_ds}")
            else:
                ingested.append(item.path)
                echo(f"input {item.path}: {target_ds} v{summary.version}, "
                     f"{summary.n_added} added, {summary.n_quarantined} quarantined")
        previous: str | None = None
        by_name: dict[str, str] = {}
        for i, spec in enumerate(recipe.stages):
            name = spec.name or f"{i + 1}-{spec.stage}-{spec.method}"
            echo(f"\n[{name}] {spec.stage} stage, {spec.method}, budget {spec.budget}")
            t0 = time.monotonic()
            outcome = select_stage(store, recipe.dataset, _with_parent(spec, previous, by_name),
                                   lm=lm, options=recipe.scoring, previous_selection=previous,
                                   progress=progress, echo=echo)
            report = _report(name, spec, outcome, time.monotonic() - t0)
            for note in outcome.notes:
                echo(f"  note: {note}")
            if spec.param_budget and spec.method != "dualsft":
                from curator.store.selections import get_mask_record

                existing = get_mask_record(store, outcome.selection_id)
                if existing is None:
                    echo(f"  DualSFT mask ({spec.param_budget} of parameters) for "
                         f"{outcome.selection_id}")
                    targets = None
                    if spec.target:
                        from curator.store.datasets import load_samples, resolve_version

                        targets = load_samples(store, spec.target,
                                               resolve_version(store, spec.target, None))
                    report.mask = mask_for_selection(store, outcome.selection_id, lm(),
                                                     spec.param_budget, targets,
                                                     seed=spec.seed, options=recipe.scoring)
                else:
                    report.mask = existing["info"]
            elif spec.method == "dualsft":
                from curator.store.selections import get_mask_record

                rec = get_mask_record(store, outcome.selection_id)
                report.mask = rec["info"] if rec else None
            if recipe.export is not None:
                from curator.export import export_selection

                root = export_root or Path(recipe.export.out)
                out = root / f"{outcome.selection_id}-{spec.stage}-{spec.method}"
                result = export_selection(store, outcome.selection_id, out,
                                          recipe.export.format, force=True)
                report.export = str(result.path)
            report.seconds = time.monotonic() - t0
            reports.append(report)
            previous = by_name[name] = outcome.selection_id
            store.update_run(run_id, done=i + 1)
    except BaseException as exc:
        store.finish_run(run_id, "failed", error=str(exc) or type(exc).__name__,
                         result={"stages": [asdict(r) for r in reports]})
        raise
    seconds = time.monotonic() - started
    store.finish_run(run_id, "done", result={"stages": [asdict(r) for r in reports],
                                             "ingested": ingested, "seconds": seconds})
    return RecipeReport(run_id, recipe.dataset, ingested, reports, seconds)


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


def _report(name: str, spec: StageSpec, outcome: StageOutcome, seconds: float) -> StageReport:
    r = outcome.record
    return StageReport(
        name=name, stage=r.stage, method=r.method, function=r.function, version=r.version,
        selection_id=outcome.selection_id, n_pool=r.n_pool, n_selected=r.n_selected,
        objective=r.objective, seconds=seconds, reused=outcome.reused,
        pairs_computed=sum(s.n_computed for s in outcome.scoring),
        pairs_reused=sum(s.n_reused for s in outcome.scoring), notes=list(outcome.notes))
