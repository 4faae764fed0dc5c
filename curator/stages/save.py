"""The one path from a ranker's answer to a stored selection (and its mask)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from curator.budget import DEFAULT_PARAM_BUDGET
from curator.digests import sha256_file
from curator.models import LoadedModel
from curator.outputs.mask_files import mask_density, save_mask
from curator.stages.context import Ranked, StageContext, StageOutcome, trash_notes
from curator.store import Store
from curator.store.selection_rows import SelectionRecord, save_mask_record, save_selection
from curator.vocabulary import MODEL_METHODS


def record_config(ctx: StageContext, **fields: Any) -> dict[str, Any]:
    """A selection's config: its key, the method's settings, and the trashed samples the
    pool left out (the browser rebuilds the pool without them)."""
    config: dict[str, Any] = {"spec_hash": ctx.key, **fields}
    if ctx.pools.trashed:
        config["trashed"] = ctx.pools.trashed
    return config


def save(ctx: StageContext, ranked: Ranked) -> StageOutcome:
    """Store the selection ``ranked`` describes; returns the stage's outcome."""
    spec, pools = ctx.spec, ctx.pools
    pool_ids = ctx.pool_ids
    sample_ids = [pool_ids[i] for i in ranked.ranking]
    model = ctx.lm.fingerprint if spec.method in MODEL_METHODS else None
    record = SelectionRecord(
        dataset=ctx.dataset, version=pools.version, stage=spec.stage, method=spec.method,
        budget=spec.budget, n_pool=ctx.n_pool, n_selected=len(sample_ids),
        function=ranked.function, objective=ranked.objective, model=model,
        config=ranked.config, parent=pools.parent, target=pools.target_ref,
        seconds=round(time.monotonic() - ctx.started, 3))
    sel_id = save_selection(ctx.store, record, sample_ids,
                            gains=None if ranked.gains is None else list(ranked.gains),
                            scores=ranked.scores, layers=ranked.layers, pool=pool_ids)
    if ranked.mask is not None:
        store_mask(ctx.store, sel_id, ctx.lm, ranked.mask,
                   spec.param_budget or DEFAULT_PARAM_BUDGET, {"method": "dualsft"})
    gains = np.zeros(len(sample_ids)) if ranked.gains is None else np.asarray(ranked.gains)
    return StageOutcome(sel_id, record, sample_ids, gains, ranked.runs,
                        trash_notes(pools) + ranked.notes)


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
