"""Stages: one selection step = pools + a budget + a method -> a stored selection.

``select_stage`` is what the CLI, the recipe runner and the scheduler call. It builds a
``StageContext`` once (``context``: pools, budget, key, options, a lazy model), returns an
identical stored selection when there is one, else runs the method's ranker
(``registry``: ``delift``, ``baselines``, ``gradient``) and stores the result (``save``).
"""

from __future__ import annotations

import numpy as np

from curator.config import ScoringOptions, StageSpec
from curator.scoring.engine import ScoringEngine
from curator.stages.context import (
    Echo,
    ModelSource,
    Pools,
    Ranked,
    StageContext,
    StageOutcome,
    build_context,
    resolve_pools,
    stage_key,
)
from curator.stages.quality import judge_pool
from curator.stages.registry import RANKERS, ranker
from curator.stages.save import save
from curator.store import Store
from curator.store.selection_rows import find_selection, selection_sample_ids
from curator.vocabulary import MODEL_METHODS

__all__ = ["RANKERS", "Pools", "Ranked", "StageContext", "StageOutcome", "build_context",
           "resolve_pools", "select_stage", "stage_key"]


def select_stage(store: Store, dataset: str, spec: StageSpec, *, lm: ModelSource = None,
                 options: ScoringOptions | None = None, previous_selection: str | None = None,
                 progress: bool = False, echo: Echo | None = None,
                 reuse: bool = True, engine: ScoringEngine | None = None) -> StageOutcome:
    """Select a subset of ``dataset`` for one stage and store it; returns the outcome.

    ``lm`` is a loaded model or a function that loads one (called only by methods that
    need a model). ``reuse``: when a selection with the same data, settings and model
    exists, return it instead of selecting again (selections are deterministic given their
    seed and the scores in the store: a DELIFT kernel reads every stored pair among its
    rows and columns, including pairs other stages scored; docs/design-notes.md).
    ``engine``: where every model pass runs (default: the one ``options.engine`` names).
    """
    ctx = build_context(store, dataset, spec, model=lm, options=options,
                        previous_selection=previous_selection, progress=progress, echo=echo,
                        engine=engine)
    if reuse:
        existing = find_selection(store, dataset, ctx.key)
        if existing is not None:
            ids = selection_sample_ids(store, existing.selection_id)
            return StageOutcome(existing.selection_id, existing, ids, np.zeros(len(ids)),
                                [], [f"reused {existing.selection_id}: same data, settings "
                                    "and model"], reused=True)
    full_pool = ctx.pools.pool
    prior, kept = apply_quality_prior(ctx)
    ranked = ranker(spec.method)(ctx)
    if prior is not None:
        # the ranker saw the kept rows; the selection is stored against the whole pool, so
        # its pool, its n_pool and the app's composition views still hold the left-out rows
        ranked.ranking = np.asarray(kept, dtype=np.int64)[np.asarray(ranked.ranking,
                                                                     dtype=np.int64)]
        ctx.pools.pool = full_pool
        ranked.config["quality"] = prior
        ranked.notes.append(quality_note(prior))
    return save(ctx, ranked)


def apply_quality_prior(ctx: StageContext) -> tuple[dict | None, list[int]]:
    """The quality prior (``spec.quality``): leave out the rows its drop rule names and set
    the modular term. Returns what the selection records (None: the method has no model or
    the prior is off) and the pool indices kept."""
    opts = ctx.spec.resolved_quality
    if ctx.spec.method not in MODEL_METHODS or not opts.active:
        return None, list(range(len(ctx.pools.pool)))
    decision = judge_pool(ctx)
    pool = ctx.pools.pool
    dropped = set(decision.dropped)
    kept = [i for i in range(len(pool)) if i not in dropped]
    ctx.pools.pool = [pool[i] for i in kept]
    if opts.weight > 0:
        ctx.modular = opts.weight * decision.quality(kept)
    return {"signal": opts.signal, "drop": opts.drop, "weight": opts.weight, "k": opts.k,
            # not how many rows this call scored: a rerun after a kill must record the same
            "n_pool": len(pool), "n_dropped": len(dropped),
            "dropped": {pool[i].sample_id: decision.reasons[i] for i in decision.dropped}}, kept


def quality_note(prior: dict) -> str:
    if not prior["n_dropped"]:
        return (f"quality prior ({prior['signal']}, drop {prior['drop']}): no row left out "
                f"of {prior['n_pool']}")
    return (f"quality prior ({prior['signal']}, drop {prior['drop']}): left out "
            f"{prior['n_dropped']} of {prior['n_pool']} rows whose answer the model finds "
            f"implausible for their prompt (the selection's config lists them and why)")
