"""Gradient-based stages: DualSFT (mask + subset), GAST (a subset per layer), the LESS-style
gradient-alignment baseline, and the DualSFT mask that goes with any stored selection.

Workflow layer, like ``curator.curate``: reads pools from the store, calls the gradient
engine (``curator.scoring.gradients``, ``curator.selection.dualsft``/``gast``), and stores
scores, selections and masks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from curator.config import ScoringOptions, StageSpec, config_hash
from curator.export import sha256_file
from curator.masks import mask_density, save_mask
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.cache import save_gradient_scores
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selections import (
    SelectionRecord,
    get_selection,
    save_mask_record,
    save_selection,
    selection_sample_ids,
)

if TYPE_CHECKING:
    from curator.curate import Pools, StageOutcome

DEFAULT_PARAM_BUDGET = "5%"


def budget_fraction(spec: str) -> float:
    """'5%' or '0.05' -> 0.05 (parameter budgets are always shares of the scope)."""
    text = str(spec).strip()
    value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"parameter budget must be in (0%, 100%], got {spec!r}")
    return value


def store_mask(store: Store, selection_id: str, lm: LoadedModel, mask: dict,
               param_budget: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the mask into the store's artifacts and record it against the selection."""
    rel = f"masks/{selection_id}.safetensors"
    path = store.artifacts / rel
    save_mask(mask, path, metadata={"model_fingerprint": lm.fingerprint,
                                    "selection_id": selection_id,
                                    "param_budget": param_budget})
    density = mask_density(mask, lm.model)
    info = density.as_dict()
    # Per-tensor densities make the manifest long for big models; layers and kinds suffice.
    info.pop("per_tensor", None)
    info["scope_density"] = (sum(d.selected for d in density.per_tensor.values())
                             / max(1, sum(d.total for d in density.per_tensor.values())))
    info.update(extra or {})
    save_mask_record(store, selection_id, lm.fingerprint, rel, sha256_file(path),
                     density.overall.density, density.overall.total,
                     density.overall.selected, info)
    return info


def _dualsft_config(spec: StageSpec, options: ScoringOptions):
    from curator.selection.dualsft import DualSFTConfig

    g = spec.gradient
    return DualSFTConfig(seed=spec.seed, max_length=options.max_length,
                         score_batch_size=options.batch_size, warmup_steps=g.warmup_steps,
                         eta=g.eta, warmup_lr=g.eta, lambda_new=g.lambda_new,
                         lambda_prior=g.lambda_prior, tau=g.tau,
                         use_abs=g.mask_rank == "abs", spread=g.mask_spread)


def mask_for_selection(store: Store, selection_id: str, lm: LoadedModel,
                       param_budget: str = DEFAULT_PARAM_BUDGET,
                       targets: Sequence[Sample] | None = None, progress: bool = False,
                       seed: int = 0, options: ScoringOptions | None = None) -> dict[str, Any]:
    """The DualSFT parameter mask for an existing selection: parameter importance
    ``u * G`` with G summed over the selected samples only. ``targets`` give the
    validation direction (default: a held-out slice of the subset)."""
    from curator.selection.dualsft import dualsft_select

    sel = get_selection(store, selection_id)
    by_id = {s.sample_id: s for s in load_samples(store, sel.dataset, sel.version)}
    subset = [by_id[i] for i in selection_sample_ids(store, selection_id) if i in by_id]
    if not subset:
        raise ValueError(f"selection {selection_id} has no members to build a mask from")
    result = dualsft_select(lm, subset, targets or None,
                            param_budget=budget_fraction(param_budget), data_budget=1.0,
                            config=_dualsft_config(StageSpec(seed=seed), options or ScoringOptions()),
                            progress=progress)
    return store_mask(store, selection_id, lm, result.mask, param_budget,
                      {"method": "dualsft", "v_prior": result.stats.v_prior_source,
                       "v_new": result.stats.v_new_source})


def select_by_gradients(store: Store, dataset: str, spec: StageSpec, pools: Pools,
                        lm: LoadedModel, options: ScoringOptions, n_select: int, *,
                        started: float, spec_hash: str, progress: bool = False,
                        echo: Callable[[str], None] | None = None) -> StageOutcome:
    from curator.curate import StageOutcome, trash_notes

    pool = pools.pool
    targets = pools.target or None
    pool_ids = [s.sample_id for s in pool]
    config: dict[str, Any] = {"spec_hash": spec_hash, "seed": spec.seed,
                              "max_length": options.max_length, "targets": pools.target_ref}
    if pools.trashed:
        config["trashed"] = pools.trashed  # the browser rebuilds the pool without them
    layers: dict[str, list[str]] | None = None
    scores: np.ndarray | None = None
    mask = None
    notes: list[str] = trash_notes(pools)
    if spec.method == "dualsft":
        from curator.selection.dualsft import dualsft_select

        pb = spec.param_budget or DEFAULT_PARAM_BUDGET
        result = dualsft_select(lm, pool, targets, param_budget=budget_fraction(pb),
                                data_budget=n_select, config=_dualsft_config(spec, options),
                                progress=progress)
        ranking = list(result.selected)
        scores = np.asarray(result.scores)
        mask = result.mask
        function = "top_k_gradient_utility"
        config.update({"param_budget": pb, "co_extract": True,
                       "gradient": dataclasses.asdict(spec.gradient),
                       "v_new": result.stats.v_new_source,
                       "v_prior": result.stats.v_prior_source})
    elif spec.method == "gast":
        from curator.selection.gast import DEFAULT_LAYER_SHARE, gast_select

        result = gast_select(lm, pool, targets, budget=n_select, seed=spec.seed,
                             max_length=options.max_length,
                             score_batch_size=options.batch_size, progress=progress,
                             layer_share=DEFAULT_LAYER_SHARE)
        layers = result.subsets_by_id(pool)
        # The subset to export is every sample some layer trains on, most-used first.
        count: dict[int, int] = {}
        first: dict[int, int] = {}
        for idx in result.layer_subsets.values():
            for rank, i in enumerate(idx):
                count[i] = count.get(i, 0) + 1
                first[i] = min(first.get(i, rank), rank)
        ranking = sorted(count, key=lambda i: (-count[i], first[i], i))
        scores = np.nanmean(result.scores, axis=1) if result.scores.size else None
        function = "gast_sampled"
        config.update({"rule": "sample", "layers": len(layers),
                       "layer_share": DEFAULT_LAYER_SHARE,
                       "layer_size": max((len(v) for v in layers.values()), default=0),
                       "support": result.support})
    elif spec.method == "less":
        from curator.scoring.gradients import alignment_scores, gradient_statistics, resolve_scope

        scope = resolve_scope(lm.model)
        stats = gradient_statistics(lm, pool, targets, scope=scope, seed=spec.seed,
                                    max_length=options.max_length)
        raw = alignment_scores(lm, pool, stats, scope, options.batch_size, options.max_length,
                               progress).total
        config["v_new"] = stats.v_new_source
        scores = np.asarray(raw, dtype=float)
        key = np.where(np.isnan(scores), -np.inf, scores)
        ranking = [int(i) for i in np.argsort(-key, kind="stable")[:n_select]]
        function = "top_k_gradient_alignment"
        notes.append("LESS-style baseline: top-k by <v_target, g_n> (inner product with the "
                     "mean target gradient, no LoRA projection or normalisation)")
    else:
        raise ValueError(f"unknown gradient method {spec.method!r}")
    if scores is not None:
        save_gradient_scores(store, lm.fingerprint, config_hash([spec.method, config]),
                             pool_ids, np.nan_to_num(scores, nan=0.0))
    sample_ids = [pool_ids[i] for i in ranking]
    sel_scores = None if scores is None else [float(scores[i]) for i in ranking]
    record = SelectionRecord(
        dataset=dataset, version=pools.version, stage=spec.stage, method=spec.method,
        budget=spec.budget, n_pool=len(pool), n_selected=len(sample_ids), function=function,
        objective=None if sel_scores is None else float(np.nansum(sel_scores)),
        model=lm.fingerprint, config=config, parent=pools.parent, target=pools.target_ref,
        seconds=round(time.monotonic() - started, 3))
    sel_id = save_selection(store, record, sample_ids, scores=sel_scores, layers=layers)
    if mask is not None:
        store_mask(store, sel_id, lm, mask, spec.param_budget or DEFAULT_PARAM_BUDGET,
                   {"method": "dualsft"})
    return StageOutcome(sel_id, record, sample_ids, np.zeros(len(sample_ids)), [], notes)
