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
from curator.runner import RecipeReport, run_recipe
from curator.store import Store
from curator.store.datasets import list_versions
from curator.store.selections import selection_pool_ids, selection_sample_ids

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
        # A demo-sized neighbour graph (k=2; the default is 16) keeps the DELIFT scoring to
        # about 1,700 forward pairs, a few minutes on 2 CPU cores.
        scoring=ScoringOptions(k=2, batch_size=16, max_length=512),
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


def noise_rates(store: Store, report: RecipeReport, labels: dict[str, dict]) -> dict[str, tuple]:
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


def prior_drops(store: Store, report: RecipeReport,
                labels: dict[str, dict]) -> dict[str, tuple[int, int] | None]:
    """(rows the quality prior left out, how many of them are noisy) per stage; None where
    the stage ran without the prior."""
    from curator.store.selections import get_selection

    noisy = {i for i, v in labels.items() if v.get("noisy")}
    out: dict[str, tuple[int, int] | None] = {}
    for r in report.stages:
        prior = (get_selection(store, r.selection_id).config or {}).get("quality")
        out[r.name] = None if not prior else (
            int(prior["n_dropped"]), sum(i in noisy for i in prior.get("dropped", {})))
    return out


def zero_gain_picks(store: Store, report: RecipeReport) -> dict[str, int | None]:
    """Picks a DELIFT stage made at zero gain (no scored pair covered more: the tail was
    ordered by mean utility), per stage; None for methods without a set function."""
    from curator.store.selections import get_selection

    out: dict[str, int | None] = {}
    for r in report.stages:
        config = get_selection(store, r.selection_id).config or {}
        out[r.name] = int(config.get("zero_gain_picks", 0)) if r.objective is not None \
            else None
    return out


def run_demo(store: Store, model: str | None = None, data_dir: Path | None = None,
             export_dir: Path | None = None, echo: Callable[[str], None] = print,
             model_loader: Callable[[], LoadedModel] | None = None,
             k: int | None = None) -> RecipeReport:
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
    rates = noise_rates(store, report, labels)
    zero = zero_gain_picks(store, report)
    drops = prior_drops(store, report, labels)
    echo("\n== summary ==")
    echo(f"{'stage':<14} {'ver':>3} {'selection':<9} {'pool':>5} {'picked':>6} {'objective':>9} "
         f"{'zero gain':>9} {'noisy in pool':>13} {'prior left out':>14} "
         f"{'noisy picked':>12} {'pairs':>6} {'time':>7}")
    for r in report.stages:
        pool_rate, sel_rate, n_sel_noisy, n_pool_noisy = rates[r.name]
        obj = "-" if r.objective is None else f"{r.objective:.2f}"
        zg = "-" if zero[r.name] is None else str(zero[r.name])
        dropped = "-" if drops[r.name] is None else \
            f"{drops[r.name][0]} ({drops[r.name][1]} noisy)"
        echo(f"{r.name:<14} {r.version:>3} {r.selection_id:<9} {r.n_pool:>5} {r.n_selected:>6} "
             f"{obj:>9} {zg:>9} {f'{n_pool_noisy} ({pool_rate:.0%})':>13} {dropped:>14} "
             f"{f'{n_sel_noisy} ({sel_rate:.0%})':>12} {r.pairs_computed:>6} "
             f"{r.seconds:>6.1f}s")
    for r in report.stages:
        if r.mask:
            echo(f"\nDualSFT mask for {r.selection_id}: "
                 f"{r.mask['overall']['selected']:,} of {r.mask['overall']['total']:,} "
                 f"parameters ({r.mask['overall']['density']:.2%} of the model, "
                 f"{r.mask['scope_density']:.1%} of its linear layers)")
    echo(f"\nexports:  {export_dir.resolve()}")
    echo(f"store:    {store.path.resolve()}")
    echo(f"finished in {time.monotonic() - started:.0f} s")
    echo(f"open the app:  .venv/bin/curator app --store {store.path}")
    return report
