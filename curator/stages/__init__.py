"""Stages: one selection step = pools + a budget + a method -> a stored selection.

``select_stage`` is what the CLI, the recipe runner and the scheduler call. It builds a
``StageContext`` once (``context``: pools, budget, key, options, a lazy model), returns an
identical stored selection when there is one, else runs the method's ranker
(``registry``: ``delift``, ``baselines``, ``gradient``) and stores the result (``save``).
"""

from __future__ import annotations

import numpy as np

from curator.config import ScoringOptions, StageSpec
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
from curator.stages.registry import RANKERS, ranker
from curator.stages.save import save
from curator.store import Store
from curator.store.selections import find_selection, selection_sample_ids

__all__ = ["RANKERS", "Pools", "Ranked", "StageContext", "StageOutcome", "build_context",
           "resolve_pools", "select_stage", "stage_key"]


def select_stage(store: Store, dataset: str, spec: StageSpec, *, lm: ModelSource = None,
                 options: ScoringOptions | None = None, previous_selection: str | None = None,
                 progress: bool = False, echo: Echo | None = None,
                 reuse: bool = True) -> StageOutcome:
    """Select a subset of ``dataset`` for one stage and store it; returns the outcome.

    ``lm`` is a loaded model or a function that loads one (called only by methods that
    need a model). ``reuse``: when a selection with the same data, settings and model
    exists, return it instead of selecting again (selections are deterministic given their
    seed and the scores in the store: a DELIFT kernel reads every stored pair among its
    rows and columns, including pairs other stages scored; docs/design-notes.md).
    """
    ctx = build_context(store, dataset, spec, model=lm, options=options,
                        previous_selection=previous_selection, progress=progress, echo=echo)
    if reuse:
        existing = find_selection(store, dataset, ctx.key)
        if existing is not None:
            ids = selection_sample_ids(store, existing.selection_id)
            return StageOutcome(existing.selection_id, existing, ids, np.zeros(len(ids)),
                                [], [f"reused {existing.selection_id}: same data, settings "
                                    "and model"], reused=True)
    return save(ctx, ranker(spec.method)(ctx))
