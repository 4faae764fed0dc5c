"""`curator score, select, selections, export, curate, mask, train, eval, demo, app`: thin
shells over the library. Each command opens the store, makes one library call and prints
the result; library errors become a one-line message and exit 1 (``cli.common``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from curator.budget import DEFAULT_PARAM_BUDGET
from curator.cli.common import (
    CuratorError,
    dataset_option,
    eval_tokens_option,
    main,
    open_store,
    store_option,
    user_errors,
)
from curator.cli.options import engine_options, flag_error, gradient_options, scoring_options
from curator.cli.options import model_loader as _loader
from curator.cli.options import scoring_config as _options
from curator.cli.quality import quality_options
from curator.config import (
    EVAL_DEFAULTS,
    TRAIN_DEFAULTS,
    ExportSpec,
    LoraOptions,
    ScoringOptions,
    StageSpec,
    default_of,
)
from curator.store import Store
from curator.vocabulary import (
    CONTINUAL_POOLS,
    EXPORT_FORMATS,
    GAST_SAMPLING,
    HARM_RULES,
    METHODS,
    OPTIMIZERS,
    SELF_COVERAGE,
    STAGES,
)


def _stage(name: str) -> Any:
    return default_of(StageSpec, name)


@main.group()
def score() -> None:
    """Score samples with a model (results are cached in the store)."""


@score.command("utility")
@dataset_option
@store_option
@click.option("--version", "-v", "version", default=None, help="Version (default: latest).")
@click.option("--target-set", default=None,
              help="Dataset whose samples are the targets (default: the version itself).")
@click.option("--dense", is_flag=True, help="All pairs instead of kNN candidates (small sets).")
@scoring_options
@engine_options
@user_errors
def score_utility(dataset: str, store_path: Path, version: str | None, target_set: str | None,
                  dense: bool, model: str | None, k: int, hubs: str, distance: str,
                  batch_size: int, max_length: int, dtype: str,
                  trust_remote_code: bool, engine: dict[str, Any]) -> None:
    """Pairwise in-context utilities UF(target, example) on nearest-neighbour pairs.

    Only pairs not already stored for this model and configuration are computed; a rerun
    with nothing new computes nothing and says so.
    """
    from curator.scoring.jobs import score_utilities
    from curator.store.datasets import load_latest, load_samples, resolve_version

    options = _options(k, distance, batch_size, max_length, dtype, dense, hubs, engine)
    store = open_store(store_path)
    v = resolve_version(store, dataset, version)
    pool = load_samples(store, dataset, v)
    if not pool:
        raise CuratorError(f"{dataset} v{v} has no samples")
    targets = pool
    if target_set:
        targets = load_latest(store, target_set)
        if not targets:
            raise CuratorError(f"target set {target_set} has no rows")
    lm = _loader(model, dtype, trust_remote_code)()
    summary = score_utilities(store, lm, targets, pool, options, dataset=dataset,
                              progress=True, echo=lambda m: click.echo(m, err=True))
    click.echo(summary.line())


@main.command("select")
@dataset_option
@store_option
@click.option("--version", "-v", "version", default=None, help="Version (default: latest).")
@click.option("--stage", type=click.Choice(STAGES), default=_stage("stage"), show_default=True)
@click.option("--method", type=click.Choice(METHODS), default=_stage("method"),
              show_default=True)
@click.option("--budget", default=_stage("budget"), show_default=True,
              help="Subset size: a count (100), a fraction (0.3) or a percentage (30%).")
@click.option("--function", default=None,
              help="Set function (default per stage: facility_location, flvmi, flcg).")
@click.option("--target-set", default=None, help="Target dataset (task stage).")
@click.option("--parent", default=None,
              help="Continual stage: the selection to condition on (default: the latest).")
@click.option("--pool", type=click.Choice(CONTINUAL_POOLS), default=_stage("pool"),
              show_default=True,
              help="Continual stage: select among samples new since the parent's version, "
                   "or among all not previously selected.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_stage("optimizer"),
              show_default=True)
@click.option("--eta", type=float, default=_stage("eta"), show_default=True,
              help="Mutual information weight.")
@click.option("--nu", type=float, default=_stage("nu"), show_default=True,
              help="Conditional gain weight.")
@click.option("--param-budget", default=None, help="DualSFT: share of parameters to keep.")
@click.option("--self-coverage", type=click.Choice(SELF_COVERAGE),
              default=_stage("self_coverage"), show_default=True,
              help="DELIFT: how well a pick covers itself: as well as its best helper "
                   "(rows nothing helps, often noisy ones, earn nothing for themselves), "
                   "or fully (the reference code's unit diagonal).")
@click.option("--harm", type=click.Choice(HARM_RULES), default=_stage("harm"),
              show_default=True,
              help="DELIFT: leave out examples whose mean utility over their scored pairs is "
                   "negative (they make the targets they were scored with worse); with "
                   "'mean+fit' also those whose own response their most similar examples "
                   "make less likely (a wrong or swapped response); 'off': neither.")
@click.option("--expand", type=float, default=default_of(ScoringOptions, "expand"),
              show_default=True,
              help="DELIFT: when greedy runs out of scored pairs before the budget is "
                   "filled, score up to this many times the stage's graph pairs more where "
                   "the kernel has no evidence (0: off).")
@click.option("--seed", type=int, default=_stage("seed"), show_default=True)
@gradient_options
@quality_options
@scoring_options
@engine_options
@user_errors
def select_cmd(dataset: str, store_path: Path, version: str | None, stage: str, method: str,
               budget: str, function: str | None, target_set: str | None, parent: str | None,
               pool: str, optimizer: str, eta: float, nu: float, param_budget: str | None,
               self_coverage: str, harm: str, expand: float, seed: int, model: str | None,
               k: int, hubs: str, distance: str, batch_size: int, max_length: int, dtype: str,
               trust_remote_code: bool, gradient: dict[str, Any], quality: dict[str, Any],
               engine: dict[str, Any]) -> None:
    """Pick a subset for a fine-tuning stage and store it as a selection."""
    from curator.config import RecipeError
    from curator.stages import select_stage

    spec = StageSpec(stage=stage, method=method, budget=budget, function=function,
                     version=version, target=target_set, parent=parent, pool=pool,
                     optimizer=optimizer, eta=eta, nu=nu, seed=seed, param_budget=param_budget,
                     self_coverage=self_coverage, harm=harm, gradient=gradient, quality=quality)
    try:
        spec.validate("option")  # checked before the store opens or a model loads
    except RecipeError as exc:
        raise flag_error(exc) from exc
    options = _options(k, distance, batch_size, max_length, dtype, hubs=hubs, engine=engine,
                       expand=expand)
    store = open_store(store_path)
    outcome = select_stage(store, dataset, spec, lm=_loader(model, dtype, trust_remote_code),
                           options=options,
                           progress=True, echo=lambda m: click.echo(m, err=True))
    r = outcome.record
    for run in outcome.scoring:
        click.echo(run.line())
    for note in outcome.notes:
        click.echo(f"note: {note}")
    objective = "-" if r.objective is None else f"{r.objective:.4f}"
    click.echo(f"selection {outcome.selection_id}: {r.n_selected} of {r.n_pool} "
               f"({r.stage}, {r.method}, {r.function or '-'}), objective {objective}")


@main.command()
@store_option
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@user_errors
def selections(store_path: Path, dataset: str | None) -> None:
    """List stored selections."""
    from curator.store.selection_rows import list_selections

    rows = list_selections(open_store(store_path), dataset)
    click.echo(f"{'selection':<10} {'dataset':<12} {'ver':>3} {'stage':<11} {'method':<9} "
               f"{'function':<17} {'budget':>6} {'picked':>6} {'pool':>6} {'objective':>10} "
               "parent")
    for r in rows:
        obj = "-" if r.objective is None else f"{r.objective:.3f}"
        click.echo(f"{r.selection_id:<10} {r.dataset:<12} {r.version:>3} {r.stage:<11} "
                   f"{r.method:<9} {r.function or '-':<17} {r.budget:>6} {r.n_selected:>6} "
                   f"{r.n_pool:>6} {obj:>10} {r.parent or '-'}")


@main.command()
@click.argument("selection_id")
@store_option
@click.option("--format", "fmt",
              type=click.Choice(EXPORT_FORMATS),
              default=default_of(ExportSpec, "format"), show_default=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Folder to write (must not exist unless --force).")
@click.option("--force", is_flag=True, help="Replace an existing export folder.")
@user_errors
def export(selection_id: str, store_path: Path, fmt: str, out: Path, force: bool) -> None:
    """Write a selection's samples, its mask (if any) and manifest.json to a folder."""
    from curator.outputs.subsets import ExportError, export_selection

    try:
        result = export_selection(open_store(store_path), selection_id, out, fmt, force)
    except ExportError as exc:
        raise CuratorError(str(exc)) from exc
    click.echo(f"exported {result.n_rows} samples of {selection_id} to {result.path}")
    for name, digest in result.files.items():
        click.echo(f"  {name}  sha256 {digest[:16]}...")
    click.echo("  manifest.json")


@main.command()
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Recipe file (YAML or JSON).")
@store_option
@click.option("--exports", "export_root", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where exports go (default: the recipe's export.out).")
@user_errors
def curate(recipe_path: Path, store_path: Path, export_root: Path | None) -> None:
    """Run a whole recipe: ingest new inputs, score what is new, select, mask, export.

    The recipe is validated before anything runs. A rerun after a crash redoes only what
    did not finish (inputs by checksum, cached scores, identical selections reused).
    """
    from curator.config import load_recipe
    from curator.runner import run_recipe

    recipe = load_recipe(recipe_path)
    report = run_recipe(Store(store_path), recipe, export_root=export_root, progress=True,
                        echo=click.echo)
    click.echo("")
    for line in report.lines():
        click.echo(line)


@main.command()
@click.argument("selection_id")
@store_option
@click.option("--param-budget", default=DEFAULT_PARAM_BUDGET, show_default=True,
              help="Share of the model's linear-layer parameters to keep trainable.")
@click.option("--target-set", default=None,
              help="Dataset whose gradient defines the direction (default: a held-out slice).")
@click.option("--model", default=None, help="Model (default: the embedded SmolLM2).")
@click.option("--seed", default=_stage("seed"), show_default=True)
@user_errors
def mask(selection_id: str, store_path: Path, param_budget: str, target_set: str | None,
         model: str | None, seed: int) -> None:
    """Compute the DualSFT parameter mask that goes with a stored selection."""
    from curator.config import RecipeError, check_param_budget
    from curator.stages.gradient import mask_for_selection
    from curator.store.datasets import load_latest

    try:
        check_param_budget(param_budget, "option.param_budget")  # before the model loads
    except RecipeError as exc:
        raise flag_error(exc) from exc
    store = open_store(store_path)
    targets = None
    if target_set:
        targets = load_latest(store, target_set)
    lm = _loader(model, "fp32", False)()
    info = mask_for_selection(store, selection_id, lm, param_budget, targets, progress=True,
                              seed=seed)
    o = info["overall"]
    click.echo(f"mask for {selection_id}: {o['selected']:,} of {o['total']:,} parameters "
               f"({o['density']:.2%} of the model, {info['scope_density']:.1%} of the scope)")


@main.command()
@click.argument("export_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the fine-tuned model (must not exist unless --force).")
@click.option("--model", default=None, help="Model to fine-tune (default: embedded SmolLM2).")
@click.option("--epochs", default=TRAIN_DEFAULTS.epochs, show_default=True)
@click.option("--steps", default=None, type=int, help="Overrides --epochs.")
@click.option("--lr", default=TRAIN_DEFAULTS.lr, show_default=True)
@click.option("--batch-size", default=TRAIN_DEFAULTS.batch_size, show_default=True)
@click.option("--max-length", default=TRAIN_DEFAULTS.max_length, show_default=True)
@click.option("--no-mask", is_flag=True, help="Ignore the export's mask (train everything).")
@click.option("--lora", is_flag=True,
              help="Train LoRA adapters (peft) instead of the weights; --out gets the adapter. "
                   "LoRA usually wants a larger --lr (1e-4 to 2e-4).")
@click.option("--lora-rank", default=default_of(LoraOptions, "rank"), show_default=True)
@click.option("--lora-alpha", default=default_of(LoraOptions, "alpha"), show_default=True)
@click.option("--lora-dropout", default=default_of(LoraOptions, "dropout"),
              show_default=True)
@click.option("--lora-targets", default=None,
              help="Comma-separated module names (q_proj,v_proj); default: every linear "
                   "layer in the transformer blocks.")
@click.option("--gast-sampling", type=click.Choice(GAST_SAMPLING),
              default=TRAIN_DEFAULTS.gast_sampling,
              show_default=True, help="GAST export: each layer samples its rows in every "
              "batch, as the paper ('batch'), or trains on its fixed subset ('static').")
@click.option("--seed", default=TRAIN_DEFAULTS.seed, show_default=True)
@click.option("--force", is_flag=True)
@user_errors
def train(export_dir: Path, out: Path, model: str | None, epochs: int, steps: int | None,
          lr: float, batch_size: int, max_length: int, no_mask: bool, lora: bool,
          lora_rank: int, lora_alpha: float, lora_dropout: float, lora_targets: str | None,
          gast_sampling: str, seed: int, force: bool) -> None:
    """Fine-tune a model on an exported subset, honouring its mask and layer subsets.

    A GAST export trains on the union of its layers' rows; by default each layer draws its
    own rows in every batch from its scores (--gast-sampling). With --lora, a GAST export's
    layer subsets put adapters only on layers that have samples, each learning from its
    own fixed subset; a DualSFT mask is not applied (a sparse mask and LoRA are different
    restrictions)."""
    from curator.outputs.subsets import load_export
    from curator.training.finetune import train as run_train
    from curator.training.trained import check_out, save_trained

    out = check_out(out, force)  # refused before any training, with the reason
    if lora:
        import importlib.util

        from curator.training.lora import INSTALL_HINT

        if importlib.util.find_spec("peft") is None:
            raise CuratorError(INSTALL_HINT)
    exp = load_export(export_dir)
    if exp.manifest.get("model_fingerprint") and model is None:
        click.echo("note: training the default model; the export was scored with model "
                   f"{exp.manifest['model_fingerprint']}", err=True)
    mask_ = None if no_mask else exp.mask
    if lora and mask_ is not None:
        click.echo("note: the export's DualSFT mask (a sparse subset of the weights) and LoRA "
                   "(a low-rank update) are different restrictions; this run trains LoRA "
                   "adapters and does not apply the mask (drop --lora to train with it)",
                   err=True)
        mask_ = None
    layered, note = exp.layer_training(gast_sampling, lora)  # GAST: {} without layers
    if note:
        click.echo(note, err=True)
    lm = _loader(model, "fp32", False)()
    kwargs = dict(steps=steps, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                  max_length=max_length, progress=True)
    if lora:
        from curator.training.lora import train_lora

        targets = None if lora_targets is None else tuple(
            t.strip() for t in lora_targets.split(",") if t.strip())
        opts = LoraOptions(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                           target_modules=targets)
        trained, result = train_lora(lm.model, lm.tokenizer, exp.samples, opts, **layered,
                                     **kwargs)
    else:
        trained = lm.model
        result = run_train(lm, None, exp.samples, mask=mask_, **layered, **kwargs)
    out = save_trained(trained, lm.tokenizer, out, force, {
        "export": {"path": str(export_dir.resolve()),
                   "selection": (exp.manifest.get("selection") or {}).get("selection_id"),
                   "manifest_sha256": exp.manifest.get("manifest_sha256")},
        "model": {"name": lm.name, "fingerprint": lm.fingerprint},
        "lora": {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout,
                 "targets": lora_targets} if lora else None,
        "mask": mask_ is not None, "layers": bool(exp.layers),
        "gast": exp.layer_summary(result.layer_rows, "layer_scores" in layered),
        "steps": result.steps, "lr": lr, "batch_size": batch_size, "seed": seed,
        "loss": {"first": result.losses[0], "last": result.losses[-1]}})
    first, last = result.losses[0], result.losses[-1]
    click.echo(f"trained {result.steps} steps on {len(exp.samples)} samples"
               + (" with mask" if mask_ is not None else "")
               + (" as LoRA adapters" if lora else "")
               + (f" and {len(exp.layers)} layer subsets" if exp.layers else "")
               + (" sampled per batch" if "layer_scores" in layered else "")
               + f": loss {first:.4f} -> {last:.4f}; saved to {out}")


@main.command("eval")
@click.option("--model", default=None, help="Model name or path (default: embedded SmolLM2).")
@click.option("--data", "data_path", default=None, help="A file of samples (any input format).")
@click.option("--dataset", "-d", default=None, help="Or a dataset in the store.")
@store_option
@click.option("--batch-size", default=EVAL_DEFAULTS.batch_size, show_default=True)
@click.option("--max-length", default=EVAL_DEFAULTS.max_length, show_default=True)
@click.option("--exact-match", is_flag=True,
              help="Also greedy-generate an answer to each prompt and report the share that "
                   "equals the reference (after extraction and normalisation).")
@click.option("--max-new-tokens", default=EVAL_DEFAULTS.max_new_tokens, show_default=True,
              type=click.IntRange(min=1),
              help="Exact match: tokens generated per prompt at most.")
@click.option("--answer-pattern", default=None,
              help="Exact match: regex that extracts the answer from the generation and the "
                   "reference (group 1 if it has one), e.g. GSM8K's '#### (.*)'.")
@eval_tokens_option
@user_errors
def eval_cmd(model: str | None, data_path: str | None, dataset: str | None, store_path: Path,
             batch_size: int, max_length: int, exact_match: bool, max_new_tokens: int,
             answer_pattern: str | None, eval_tokens: str) -> None:
    """Mean answer-token loss of a model on a target set (compare before/after training;
    --eval-tokens), and with --exact-match the share of greedy answers equal to the references."""
    from curator.training import evaluate

    if answer_pattern is not None and not exact_match:
        raise CuratorError("--answer-pattern needs --exact-match")
    pattern = evaluate.compile_pattern(answer_pattern)  # a bad pattern: one line (user_errors)
    samples = _samples_from(data_path, dataset, store_path)
    lm = _loader(model, "fp32", False)()
    loss = evaluate.eval_loss(lm, samples, batch_size, max_length, tokens=eval_tokens)
    click.echo(f"{eval_tokens} loss {loss:.4f} on {len(samples)} samples ({lm.name})")
    if exact_match:
        em = evaluate.exact_match(lm, samples, max_new_tokens=max_new_tokens,
                                  answer_pattern=pattern, batch_size=batch_size)
        click.echo(f"exact match {em.score:.4f} ({sum(em.hits)}/{len(em.hits)}; greedy, at "
                   f"most {max_new_tokens} new tokens"
                   + (f", answers by {answer_pattern!r}" if answer_pattern else "") + ")")


def _samples_from(data_path: str | None, dataset: str | None, store_path: Path) -> list:
    """Samples from a file (read and mapped like ingest, bad rows skipped) or a dataset."""
    if bool(data_path) == bool(dataset):
        raise CuratorError("give exactly one of --data FILE or --dataset NAME")
    if dataset:
        from curator.store.datasets import load_latest

        store = open_store(store_path)
        return load_latest(store, dataset)
    from curator.ingestion.readers import read_source, sample_from_row
    from curator.ingestion.schemas import RowError

    _, rows = read_source(data_path)
    samples = []
    for row in rows:
        try:
            samples.append(sample_from_row(row))
        except RowError:
            continue
    if not samples:
        raise CuratorError(f"{data_path}: no usable rows")
    return samples

@main.command()
@store_option
@click.option("--model", default=None, help="Model to load (default: the embedded SmolLM2).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Sample data folder (default: the project's sample_data/).")
@click.option("--k", "k", default=None, type=int,
              help="Neighbours per sample for DELIFT pairs (demo default 2; library default 16).")
@user_errors
def demo(store_path: Path, model: str | None, data_dir: Path | None, k: int | None) -> None:
    """Run the main job on the project's sample data with the embedded default model.

    Ingests three versions, selects for the instruction, task and two continual stages
    (DELIFT), builds a DualSFT mask for the last subset, exports each, and prints a summary.
    """
    from curator.demo import run_demo

    run_demo(Store(store_path), model=model, data_dir=data_dir, echo=click.echo, k=k)


@main.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", default=8501, show_default=True, type=int)
@click.option("--headless/--browser", default=True, show_default=True,
              help="Do not open a browser window.")
def app(store_path: Path, host: str, port: int, headless: bool) -> None:
    """Start the Streamlit app on the store (listens on 127.0.0.1 unless --host says)."""
    import os

    # curator/app/ is part of the package (a wheel install has it too)
    app_file = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    if not app_file.exists():
        raise CuratorError(f"app not found at {app_file} (a broken install?)")
    env = dict(os.environ, CURATOR_STORE=str(store_path.resolve()))
    click.echo(f"curator app on http://{host}:{port} (store {store_path.resolve()})")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file),
           "--server.address", host, "--server.port", str(port),
           "--server.headless", str(headless).lower(), "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    sys.stdout.flush()
    sys.stderr.flush()
    # Streamlit replaces this process (same pid), so a signal sent to `curator app` reaches
    # the server itself; a child process would outlive a killed parent and keep the port.
    os.execve(sys.executable, cmd, env)
