"""DELIFT stages: score the pairwise utilities the stage's function reads (what is missing
from the store), build its kernels and maximise it greedily.

- instruction: facility location over pool x pool utilities;
- task: mutual information with a target set Q (default the paper's FLVMI form, which needs
  only Q x pool utilities; ``flmi`` is submodlib's form and also needs pool x pool);
- continual: conditional gain over the new data D given the previous data P (D x D and
  D x P utilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from curator.config import AUTO_HUBS_MAX_SHARE, ScoringOptions
from curator.scoring.jobs import (
    UtilitySummary,
    score_utilities,
    utility_config,
    utility_kernel_from_store,
    utility_scale,
)
from curator.selection import SelectionResult
from curator.stages.baselines import embedding_kernels, greedy, kernel_config
from curator.stages.context import Ranked, StageContext, ids
from curator.vocabulary import canonical_function


def _query_k(options: ScoringOptions, n_select: int, n_query: int, n_pool: int) -> int:
    """Neighbours per target for target x pool graphs. ``query_k`` 0 scores every pool
    item against every target (affordable when the target set is small); by default,
    enough that the targets' candidate lists together can fill the budget, at least k."""
    if options.query_k is not None:
        return n_pool if options.query_k == 0 else min(n_pool, options.query_k)
    return min(n_pool, max(options.k, 2 * -(-n_select // max(n_query, 1))))


def utility_kernels(ctx: StageContext, function: str
                    ) -> tuple[dict[str, Any], list[UtilitySummary]]:
    """Score the pairs the stage's function reads, then build its kernels."""
    store, lm, pools, options = ctx.store, ctx.lm, ctx.pools, ctx.options
    self_coverage = ctx.spec.self_coverage
    score = dict(dataset=ctx.dataset, progress=ctx.progress, echo=ctx.echo)
    pool, pool_ids = pools.pool, ids(pools.pool)
    chash = utility_config(lm, options).config_hash()
    fp = lm.fingerprint
    runs: list[UtilitySummary] = []
    out: dict[str, Any] = {}
    if function in ("facility_location", "graph_cut", "flcg", "flmi"):
        if len(pool) > 1:
            runs.append(score_utilities(store, lm, pool, pool, options, **score))
    if function in ("flmi", "flvmi"):
        q = pools.target
        kq = _query_k(options, ctx.n_select, len(q), len(pool))
        runs.append(score_utilities(store, lm, q, pool, options, k=kq, **score))
        # FLMI compares pool x pool and Q x pool coverage (min of the two), so both kernels
        # are divided by one scale, the largest positive utility of either; FLVMI has no
        # pool x pool kernel and keeps the query kernel's own scale.
        scale = None
        if function == "flmi":
            scale = max(utility_scale(store, fp, chash, pool_ids, pool_ids),
                        utility_scale(store, fp, chash, ids(q), pool_ids))
            if len(pool) > 1:
                out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids, pool_ids,
                                                          scale, self_coverage).matrix
        # (n_query, n_pool): how much each pool item helps each target -> transposed below.
        qk = utility_kernel_from_store(store, fp, chash, ids(q), pool_ids, scale).matrix
        out["query_kernel"] = qk.T.tocsr()
    if function == "flcg":
        prev = pools.previous
        runs.append(score_utilities(store, lm, pool, prev, options, **score))
        scale = max(utility_scale(store, fp, chash, pool_ids, pool_ids),
                    utility_scale(store, fp, chash, pool_ids, ids(prev)))
        out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids, pool_ids,
                                                  scale, self_coverage).matrix
        out["private_kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                          ids(prev), scale).matrix
        return out, runs
    if "kernel" not in out and function != "flvmi":
        if len(pool) > 1:
            out["kernel"] = utility_kernel_from_store(store, fp, chash, pool_ids,
                                                      pool_ids,
                                                      self_coverage=self_coverage).matrix
        else:
            out["kernel"] = sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    return out, runs


def _fill_zero_gain_tail(ctx: StageContext, result: SelectionResult,
                         fallback: dict[str, Any], function: str
                         ) -> tuple[np.ndarray, np.ndarray, int]:
    """Picks made at zero gain carry no information from the utilities (no candidate pair
    covered anything more); re-pick that tail with the embedding kernels, starting from the
    informative picks, instead of taking candidates in index order."""
    ranking, gains = np.asarray(result.ranking), np.asarray(result.gains, dtype=float)
    informative = int(np.argmax(gains <= 1e-12)) if (gains <= 1e-12).any() else len(gains)
    if informative >= len(ranking):
        return ranking, gains, 0
    head = ranking[:informative]
    tail = greedy(ctx, fallback, function, ctx.n_select - informative,
                  initial_subset=head if len(head) else None)
    new_rank = np.concatenate([head, np.asarray(tail.ranking)])
    new_gains = np.concatenate([gains[:informative], np.zeros(len(tail.ranking))])
    return new_rank, new_gains, len(tail.ranking)


def rank_delift(ctx: StageContext) -> Ranked:
    """Greedy maximisation of the stage's function over utility kernels, scored as needed;
    a tail picked at zero gain is re-picked by embedding similarity."""
    options, lm = ctx.options, ctx.lm
    function = canonical_function(ctx.spec.resolved_function)
    config = kernel_config(ctx)
    notes: list[str] = []
    if ctx.auto_hubs and options.hubs:
        notes.append(f"scored the {options.hubs} hub examples against every target as well: "
                     f"the budget ({ctx.n_select} of {ctx.n_pool}) is at most "
                     f"{AUTO_HUBS_MAX_SHARE:.0%} of the pool (scoring.hubs: auto)")
    kernels, runs = utility_kernels(ctx, function)
    config["utility_config"] = utility_config(lm, options).config_hash()
    config["self_coverage"] = ctx.spec.self_coverage
    # what the kernels held (stored pairs of other stages count too): two selections
    # with equal settings but different store histories differ here
    config["kernel_nnz"] = {name: int(m.nnz) for name, m in kernels.items() if m is not None}
    result = greedy(ctx, kernels, function, ctx.n_select)
    ranking, gains = np.asarray(result.ranking), np.asarray(result.gains)
    if (gains <= 1e-12).any():
        fallback = embedding_kernels(ctx, function)
        ranking, gains, filled = _fill_zero_gain_tail(ctx, result, fallback, function)
        if filled:
            notes.append(f"{filled} picks made at zero utility gain were re-picked by "
                         "embedding similarity")
            config["zero_gain_refilled"] = filled
    return Ranked(ranking, gains, float(result.objective), function, runs, config=config,
                  notes=notes)
