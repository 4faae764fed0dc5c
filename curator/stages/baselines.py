"""The baselines: random and full (no model), RDS+ and embedding-only facility location
(pooled hidden states of the model, no utilities).

Also the pieces the DELIFT stage shares with the embedding baseline: the config every
kernel-family selection records, cosine kernels from embeddings, one greedy call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from curator.scoring.jobs import ensure_embeddings
from curator.selection import SelectionResult, select
from curator.stages.context import Pools, Ranked, StageContext, ids
from curator.stages.save import record_config
from curator.vocabulary import canonical_function


def kernel_config(ctx: StageContext) -> dict[str, Any]:
    """What the model-free, RDS+ and kernel selections record (the same fields for all of
    them, so their stored configs keep their shape)."""
    spec, options = ctx.spec, ctx.options
    fields: dict[str, Any] = {
        "function": canonical_function(spec.resolved_function), "optimizer": spec.optimizer,
        "eta": spec.eta, "nu": spec.nu, "seed": spec.seed, "k": options.k,
        "distance": options.distance, "pool": spec.pool if spec.stage == "continual" else None}
    if options.hubs:
        fields["hubs"] = options.hubs
    return record_config(ctx, **fields)


def embedding_kernels(ctx: StageContext, function: str) -> dict[str, Any]:
    """Cosine kernels from the model's pooled hidden states (the model-independent
    baseline's shapes, the same orientation as the utility kernels)."""
    from curator.scoring.kernels import embedding_kernel

    pools, options = ctx.pools, ctx.options
    everyone = {s.sample_id: s for s in [*pools.pool, *pools.target, *pools.previous]}
    emb, _ = ensure_embeddings(ctx.store, ctx.lm, list(everyone.values()),
                               batch_size=options.batch_size, engine=ctx.engine)
    row = {sid: i for i, sid in enumerate(everyone)}
    pool_ids = ids(pools.pool)
    e_pool = emb[[row[i] for i in pool_ids]]
    k = min(options.k, max(len(pool_ids) - 1, 1))
    out: dict[str, Any] = {}
    if function in ("facility_location", "graph_cut", "flcg", "flmi"):
        out["kernel"] = embedding_kernel(e_pool, pool_ids, k).matrix if len(pool_ids) > 1 \
            else sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    if function in ("flmi", "flvmi"):
        q_ids = ids(pools.target)
        e_q = emb[[row[i] for i in q_ids]]
        cos = (e_pool @ e_q.T + 1.0) / 2.0                      # (n_pool, n_query)
        out["query_kernel"] = np.clip(cos, 0.0, 1.0).astype(np.float32)
    if function == "flcg":
        p_ids = ids(pools.previous)
        e_p = emb[[row[i] for i in p_ids]]
        out["private_kernel"] = embedding_kernel(e_pool, pool_ids, min(options.k, len(p_ids)),
                                                 col_emb=e_p, col_ids=p_ids).matrix
    return out


def greedy(ctx: StageContext, kernels: dict[str, Any], function: str, n_select: int,
           initial_subset: np.ndarray | None = None) -> SelectionResult:
    """Maximise the stage's function over ``kernels`` with the stage's optimiser."""
    spec = ctx.spec
    return select(kernels.get("kernel"), n_select, function=function,
                  optimizer=spec.optimizer, query_kernel=kernels.get("query_kernel"),
                  private_kernel=kernels.get("private_kernel"), eta=spec.eta, nu=spec.nu,
                  seed=spec.seed, initial_subset=initial_subset, modular=ctx.modular)


def rank_embedding(ctx: StageContext) -> Ranked:
    """Embedding-only facility location (DELIFT's model-independent variant)."""
    function = canonical_function(ctx.spec.resolved_function)
    result = greedy(ctx, embedding_kernels(ctx, function), function, ctx.n_select)
    return Ranked(np.asarray(result.ranking), np.asarray(result.gains),
                  float(result.objective), function, config=kernel_config(ctx))


def rds_ranking(pool_emb: np.ndarray, target_emb: np.ndarray, n_select: int,
                bonus: np.ndarray | None = None) -> np.ndarray:
    """RDS+ (Ivison et al. 2025): cosine of pooled hidden states to each target point;
    take the best unpicked pool item of each target in turn (round robin) up to the budget.
    ``bonus`` (n_pool,): added to every similarity of a pool item (the quality prior's
    modular term), so a better row wins among equally similar ones."""
    sims = pool_emb @ target_emb.T                 # (n_pool, n_query)
    if bonus is not None:
        sims = sims + np.asarray(bonus, dtype=sims.dtype)[:, None]
    order = np.argsort(-sims, axis=0, kind="stable")  # per target, pool items best first
    picked: list[int] = []
    taken = np.zeros(len(pool_emb), dtype=bool)
    cursor = np.zeros(target_emb.shape[0], dtype=np.int64)
    while len(picked) < n_select:
        progressed = False
        for q in range(target_emb.shape[0]):
            while cursor[q] < len(pool_emb) and taken[order[cursor[q], q]]:
                cursor[q] += 1
            if cursor[q] < len(pool_emb):
                i = int(order[cursor[q], q])
                taken[i] = True
                picked.append(i)
                progressed = True
                if len(picked) == n_select:
                    break
        if not progressed:
            break
    return np.asarray(picked, dtype=np.int64)


def rank_rds(ctx: StageContext) -> Ranked:
    pools: Pools = ctx.pools
    if not pools.target:
        raise ValueError("rds ranks the pool by similarity to a target set: pass a target")
    everyone = {s.sample_id: s for s in [*pools.pool, *pools.target]}
    emb, _ = ensure_embeddings(ctx.store, ctx.lm, list(everyone.values()),
                               batch_size=ctx.options.batch_size, engine=ctx.engine)
    row = {sid: i for i, sid in enumerate(everyone)}
    ranking = rds_ranking(emb[[row[i] for i in ids(pools.pool)]],
                          emb[[row[s.sample_id] for s in pools.target]], ctx.n_select,
                          bonus=ctx.modular)
    return Ranked(ranking, np.zeros(len(ranking)), None, "round_robin_cosine",
                  config=kernel_config(ctx))


def rank_random(ctx: StageContext) -> Ranked:
    n_select = ctx.n_select
    ranking = np.random.default_rng(ctx.spec.seed).permutation(ctx.n_pool)[:n_select]
    return Ranked(ranking, np.zeros(n_select), None, None, config=kernel_config(ctx))


def rank_full(ctx: StageContext) -> Ranked:
    return Ranked(np.arange(ctx.n_pool), np.zeros(ctx.n_pool), None, None,
                  config=kernel_config(ctx))
