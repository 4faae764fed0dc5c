"""Gradient-based stages: DualSFT (mask + subset), GAST (a subset per layer), the LESS-style
gradient-alignment baseline, and the DualSFT mask that goes with any stored selection.

Calls the gradient passes (``curator.stages.gradient_passes``, over
``curator.scoring.gradients``, with the rules of ``curator.selection.dualsft`` and
``gast``), caches the per-sample scores in the store and returns a ``Ranked`` that
``curator.stages.save`` stores (with the DualSFT mask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from curator.budget import budget_fraction
from curator.config import ScoringOptions, StageSpec, config_hash, default_of
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.engine import LOCAL, ScoringEngine
from curator.stages.context import Ranked, StageContext
from curator.stages.save import DEFAULT_PARAM_BUDGET, record_config, store_mask
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.scores import remember_model, save_gradient_scores
from curator.store.selection_rows import get_selection, selection_sample_ids


def _dualsft_config(spec: StageSpec, options: ScoringOptions):
    from curator.stages.gradient_passes import DualSFTConfig

    g = spec.gradient
    return DualSFTConfig(seed=spec.seed, max_length=options.max_length,
                         score_batch_size=options.batch_size, warmup_steps=g.warmup_steps,
                         eta=g.eta, warmup_lr=g.eta, lambda_new=g.lambda_new,
                         lambda_prior=g.lambda_prior, tau=g.tau,
                         use_abs=g.mask_rank == "abs", spread=g.mask_spread,
                         normalize=g.normalize)


def mask_for_selection(store: Store, selection_id: str, lm: LoadedModel,
                       param_budget: str = DEFAULT_PARAM_BUDGET,
                       targets: Sequence[Sample] | None = None, progress: bool = False,
                       seed: int = default_of(StageSpec, "seed"),
                       options: ScoringOptions | None = None,
                       engine: ScoringEngine = LOCAL) -> dict[str, Any]:
    """The DualSFT parameter mask for an existing selection: parameter importance
    ``u * G`` with G summed over the selected samples only. ``targets`` give the
    validation direction (default: a held-out slice of the subset). ``engine``: where
    the gradient passes run (the warm-up copy's always run here)."""
    from curator.stages.gradient_passes import dualsft_select

    sel = get_selection(store, selection_id)
    by_id = {s.sample_id: s for s in load_samples(store, sel.dataset, sel.version)}
    subset = [by_id[i] for i in selection_sample_ids(store, selection_id) if i in by_id]
    if not subset:
        raise ValueError(f"selection {selection_id} has no members to build a mask from")
    result = dualsft_select(lm, subset, targets or None,
                            param_budget=budget_fraction(param_budget), data_budget=1.0,
                            config=_dualsft_config(StageSpec(seed=seed),
                                                   options or ScoringOptions()),
                            progress=progress, engine=engine)
    return store_mask(store, selection_id, lm, result.mask, param_budget,
                      {"method": "dualsft", "v_prior": result.stats.v_prior_source,
                       "v_new": result.stats.v_new_source})


def rank_dualsft(ctx: StageContext) -> Ranked:
    """Data utilities <u, g_n> and parameter importances u * G from one pass; the subset is
    the top of the first, the mask of the second (co-extracted)."""
    from curator.stages.gradient_passes import dualsft_select

    spec = ctx.spec
    pb = spec.param_budget or DEFAULT_PARAM_BUDGET
    result = dualsft_select(ctx.lm, ctx.pools.pool, ctx.pools.target or None,
                            param_budget=budget_fraction(pb), data_budget=ctx.n_select,
                            config=_dualsft_config(spec, ctx.options), progress=ctx.progress,
                            engine=ctx.engine)
    config = _gradient_config(ctx, param_budget=pb, co_extract=True,
                              gradient=dataclasses.asdict(spec.gradient),
                              v_new=result.stats.v_new_source,
                              v_prior=result.stats.v_prior_source)
    return _scored(ctx, list(result.selected), np.asarray(result.scores),
                   "top_k_gradient_utility", config, mask=result.mask)


def rank_gast(ctx: StageContext) -> Ranked:
    """A subset per layer (sampled by alignment with the support gradient); the subset to
    export is every sample some layer trains on, most-used first."""
    from curator.selection.gast import DEFAULT_LAYER_SHARE
    from curator.stages.gradient_passes import gast_select

    pool, options = ctx.pools.pool, ctx.options
    result = gast_select(ctx.lm, pool, ctx.pools.target or None, budget=ctx.n_select,
                         seed=ctx.spec.seed, max_length=options.max_length,
                         score_batch_size=options.batch_size, progress=ctx.progress,
                         layer_share=DEFAULT_LAYER_SHARE, engine=ctx.engine)
    layers = result.subsets_by_id(pool)
    count: dict[int, int] = {}
    first: dict[int, int] = {}
    for idx in result.layer_subsets.values():
        for rank, i in enumerate(idx):
            count[i] = count.get(i, 0) + 1
            first[i] = min(first.get(i, rank), rank)
    ranking = sorted(count, key=lambda i: (-count[i], first[i], i))
    scores = np.nanmean(result.scores, axis=1) if result.scores.size else None
    config = _gradient_config(ctx, rule="sample", layers=len(layers),
                              layer_share=DEFAULT_LAYER_SHARE,
                              layer_size=max((len(v) for v in layers.values()), default=0),
                              support=result.support)
    # Each layer's scores of the pool rows it scored, for training's per-batch sampling
    # (``curator.training.finetune``): stored under their own key, which the selection's
    # config names.
    key = config_hash(["gast-layer-scores", ctx.spec.method, config])
    remember_model(ctx.store, ctx.lm.fingerprint, ctx.lm.name)
    for j, layer in enumerate(result.layers):
        ok = np.flatnonzero(~np.isnan(result.scores[:, j]))
        save_gradient_scores(ctx.store, ctx.lm.fingerprint, key,
                             [ctx.pool_ids[i] for i in ok], result.scores[ok, j], layer=layer)
    config["layer_scores"] = key
    return _scored(ctx, ranking, scores, "gast_sampled", config, layers=layers)


def rank_less(ctx: StageContext) -> Ranked:
    """LESS-style baseline: top-k by the inner product with the mean target gradient."""
    from curator.scoring.gradients import alignment_scores, gradient_statistics, resolve_scope

    lm, pool, options, engine = ctx.lm, ctx.pools.pool, ctx.options, ctx.engine
    scope = resolve_scope(lm.model)
    stats = gradient_statistics(lm, pool, ctx.pools.target or None, scope=scope,
                                seed=ctx.spec.seed, max_length=options.max_length,
                                engine=engine, pool_sums=False)   # LESS reads v_new only
    raw = alignment_scores(lm, pool, stats, scope, options.batch_size, options.max_length,
                           ctx.progress, engine=engine).total
    scores = np.asarray(raw, dtype=float)
    key = np.where(np.isnan(scores), -np.inf, scores)
    ranking = [int(i) for i in np.argsort(-key, kind="stable")[:ctx.n_select]]
    ranked = _scored(ctx, ranking, scores, "top_k_gradient_alignment",
                     _gradient_config(ctx, v_new=stats.v_new_source))
    ranked.notes.append("LESS-style baseline: top-k by <v_target, g_n> (inner product with "
                        "the mean target gradient, no LoRA projection or normalisation)")
    return ranked


def _gradient_config(ctx: StageContext, **fields: Any) -> dict[str, Any]:
    config = record_config(ctx, seed=ctx.spec.seed, max_length=ctx.options.max_length,
                           targets=ctx.pools.target_ref)
    config.update(fields)
    return config


def _scored(ctx: StageContext, ranking: list[int], scores: np.ndarray | None, function: str,
            config: dict[str, Any], **extra: Any) -> Ranked:
    """Cache the per-sample scores, then rank: a pick's score is stored with it and the
    objective is their sum."""
    if scores is not None:
        remember_model(ctx.store, ctx.lm.fingerprint, ctx.lm.name)
        save_gradient_scores(ctx.store, ctx.lm.fingerprint,
                             config_hash([ctx.spec.method, config]), ctx.pool_ids,
                             np.nan_to_num(scores, nan=0.0))
    sel_scores = None if scores is None else [float(scores[i]) for i in ranking]
    objective = None if sel_scores is None else float(np.nansum(sel_scores))
    return Ranked(ranking, None, objective, function, scores=sel_scores, config=config,
                  **extra)
