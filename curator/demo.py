"""`make demo` / `curator demo`: the whole path on the project's sample data.

Instruction-stage selection on v1, task-stage selection toward the target set, continual
selection on v2 and v3 conditioned on what was selected before, a DualSFT parameter mask
for the last subset, exports of each, and a summary table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from curator.config import ExportSpec, InputSpec, Recipe, ScoringOptions, StageSpec
from curator.models import LoadedModel
from curator.pipeline import ingest_once
from curator.report import RunReport, mask_words
from curator.runner import run_recipe
from curator.store import Store
from curator.store.datasets import list_versions
from curator.store.selection_rows import selection_pool_ids, selection_sample_ids

DEMO_DATASET = "demo"
TARGET_DATASET = "demo-target"
MALFORMED_DATASET = "demo-malformed"


def demo_recipe(data_dir: Path, export_dir: Path) -> Recipe:
    """The demo as a recipe (also a worked example of the recipe format)."""
    return Recipe(
        dataset=DEMO_DATASET,
        inputs=[InputSpec(str(data_dir / "v1.jsonl"), append=False),
                InputSpec(str(data_dir / "v2.jsonl")),
                InputSpec(str(data_dir / "v3.csv")),
                InputSpec(str(data_dir / "target.jsonl"), dataset=TARGET_DATASET,
                          append=False)],
        # A demo-sized neighbour graph (k=2; the default is 16), and the task stage's targets
        # scored against their embedding neighbours, not densely (dense_target 0; the default
        # scores all 30 x 230 pairs, 2 of the demo's 5 minutes). The quality-prior benchmark
        # found no difference between the two with the prior on (bench/RESULTS.md).
        scoring=ScoringOptions(k=2, batch_size=16, max_length=512, dense_target=0),
        stages=[
            StageSpec(name="instruction", stage="instruction", budget="30%", version=1),
            StageSpec(name="task", stage="task", budget="30%", version=1,
                      target=TARGET_DATASET),
            StageSpec(name="continual-v2", stage="continual", budget="30%", version=2,
                      parent="instruction"),
            StageSpec(name="continual-v3", stage="continual", budget="30%", version=3,
                      parent="previous", param_budget="5%"),
        ],
        export=ExportSpec(format="jsonl", out=str(export_dir)),
    ).validate()


def noise_rates(store: Store, report: RunReport, labels: dict[str, dict]) -> dict[str, tuple]:
    """(noisy share of the pool, noisy share of the selection, noisy picked, noisy in the
    pool) per stage, over the pool each selection stored."""
    noisy = {i for i, v in labels.items() if v.get("noisy")}
    out = {}
    for r in report.stages:
        pool = selection_pool_ids(store, r.selection_id)
        picked = selection_sample_ids(store, r.selection_id)
        pool_rate = sum(i in noisy for i in pool) / max(1, len(pool))
        sel_rate = sum(i in noisy for i in picked) / max(1, len(picked))
        out[r.name] = (pool_rate, sel_rate, sum(i in noisy for i in picked),
                       sum(i in noisy for i in pool))
    return out


def prior_noisy(store: Store, report: RunReport, labels: dict[str, dict]) -> dict[str, int]:
    """How many of the rows the quality prior left out are noisy, per stage that ran with
    the prior (the report counts the rows left out)."""
    from curator.store.selection_rows import get_selection

    noisy = {i for i, v in labels.items() if v.get("noisy")}
    out: dict[str, int] = {}
    for r in report.stages:
        if r.prior_dropped is not None:
            prior = (get_selection(store, r.selection_id).config or {})["quality"]
            out[r.name] = sum(i in noisy for i in prior.get("dropped", {}))
    return out


# The demo's summary: the run report's stage table with the sample data's noise labels.
SUMMARY_COLUMNS = ["stage", "ver", "selection", "pool", "picked", "objective", "zero gain",
                   "noisy in pool", "prior left out", "noisy picked", "pairs", "time"]


def summary_lines(store: Store, report: RunReport, labels: dict[str, dict]) -> list[str]:
    """Each stage's row of the report, with how many noisy rows were in its pool, picked,
    and among those the quality prior left out."""
    rates = noise_rates(store, report, labels)
    dropped_noisy = prior_noisy(store, report, labels)
    extra: dict[str, dict[str, str]] = {}
    for r in report.stages:
        pool_rate, sel_rate, n_sel_noisy, n_pool_noisy = rates[r.name]
        extra[r.name] = {"noisy in pool": f"{n_pool_noisy} ({pool_rate:.0%})",
                         "noisy picked": f"{n_sel_noisy} ({sel_rate:.0%})"}
        if r.name in dropped_noisy:
            extra[r.name]["prior left out"] = \
                f"{r.prior_dropped} ({dropped_noisy[r.name]} noisy)"
    return report.stage_table(SUMMARY_COLUMNS, extra)


def run_demo(store: Store, model: str | None = None, data_dir: Path | None = None,
             export_dir: Path | None = None, echo: Callable[[str], None] = print,
             model_loader: Callable[[], LoadedModel] | None = None,
             k: int | None = None) -> RunReport:
    from curator.sample_data import SAMPLE_DATA_DIR, ensure_sample_data, load_labels

    started = time.monotonic()
    data_dir = ensure_sample_data(data_dir or SAMPLE_DATA_DIR)
    export_dir = export_dir or store.path / "exports"
    echo(f"store:       {store.path.resolve()}")
    echo(f"sample data: {data_dir}")
    recipe = demo_recipe(data_dir, export_dir)
    recipe.model = model
    if k is not None:
        recipe.scoring.k = k
    store.init()
    bad = ingest_once(store, data_dir / "malformed.jsonl", MALFORMED_DATASET, append=False)
    if bad is not None:
        echo(f"malformed.jsonl: {bad.n_accepted} rows accepted, {bad.n_quarantined} "
             f"quarantined (see `curator show --quarantine -d {MALFORMED_DATASET}`)")
    report = run_recipe(store, recipe, model_loader=model_loader, progress=True, echo=echo)
    echo("\n== versions ==")
    for v in list_versions(store, DEMO_DATASET):
        echo(f"  v{v.version}: {v.n_members} samples (+{v.n_added}, {v.n_quarantined} "
             f"quarantined) from {Path(v.source).name}")
    labels = load_labels(data_dir)
    echo("\n== summary ==")
    for line in summary_lines(store, report, labels):
        echo(line)
    for r in report.stages:
        if r.mask:
            echo(f"\nDualSFT mask for {r.selection_id}: {mask_words(r.mask)}")
    echo(f"\nexports:  {export_dir.resolve()}")
    echo(f"store:    {store.path.resolve()}")
    echo(f"finished in {time.monotonic() - started:.0f} s")
    echo(f"open the app:  .venv/bin/curator app --store {store.path}")
    return report
