"""DELIFT stages: score the pairwise utilities the stage's function reads (what is missing
from the store), build its kernels and maximise it greedily.

- instruction: facility location over pool x pool utilities;
- task: mutual information with a target set Q (default the paper's FLVMI form, which needs
  only Q x pool utilities; ``flmi`` is submodlib's form and also needs pool x pool);
- continual: conditional gain over the new data D given the previous data P (D x D and
  D x P utilities).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
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
from curator.stages.baselines import kernel_config
from curator.stages.context import Ranked, StageContext, ids
from curator.store import Store
from curator.vocabulary import canonical_function


def _query_k(options: ScoringOptions, n_select: int, n_query: int, n_pool: int) -> int:
    """Neighbours per target for target x pool graphs. ``query_k`` 0 scores every pool
    item against every target (affordable when the target set is small); by default, every
    pool item too when target x pool is at most ``dense_target`` pairs (so the utilities, not
    embedding similarity, decide which pool items each target sees), else enough that the
    targets' candidate lists together can fill the budget, at least k."""
    if options.query_k is not None:
        return n_pool if options.query_k == 0 else min(n_pool, options.query_k)
    if n_query * n_pool <= options.dense_target:
        return n_pool
    return min(n_pool, max(options.k, 2 * -(-n_select // max(n_query, 1))))


def utility_kernels(ctx: StageContext, function: str
                    ) -> tuple[dict[str, Any], list[UtilitySummary]]:
    """Score the pairs the stage's function reads, then build its kernels."""
    store, lm, pools, options = ctx.store, ctx.lm, ctx.pools, ctx.options
    score = dict(dataset=ctx.dataset, progress=ctx.progress, echo=ctx.echo, engine=ctx.engine)
    pool = pools.pool
    runs: list[UtilitySummary] = []
    if function in ("facility_location", "graph_cut", "flcg", "flmi") and len(pool) > 1:
        runs.append(score_utilities(store, lm, pool, pool, options, **score))
    if function in ("flmi", "flvmi"):
        kq = _query_k(options, ctx.n_select, len(pools.target), len(pool))
        runs.append(score_utilities(store, lm, pools.target, pool, options, k=kq, **score))
    if function == "flcg":
        runs.append(score_utilities(store, lm, pool, pools.previous, options, **score))
    return kernels_from_store(ctx, function), runs


def kernels_from_store(ctx: StageContext, function: str,
                       exclude: Set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The stage function's kernels from every stored pair among their rows and columns,
    less the pairs in ``exclude``."""
    pools = ctx.pools
    return delift_kernels(ctx.store, ctx.lm.fingerprint,
                          utility_config(ctx.lm, ctx.options).config_hash(), function,
                          ids(pools.pool), ids(pools.target), ids(pools.previous),
                          ctx.spec.self_coverage, exclude)


def delift_kernels(store: Store, fingerprint: str, config_hash: str, function: str,
                   pool: Sequence[str], target: Sequence[str] = (),
                   previous: Sequence[str] = (), self_coverage: str = "best",
                   exclude: Set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The kernels a DELIFT function reads, from the utilities stored for the model
    ``fingerprint`` and utility config ``config_hash`` (the one rule for the stage and for
    the app's "why selected"): ``kernel`` (pool x pool), ``query_kernel`` (pool x target,
    FLMI and FLVMI) and ``private_kernel`` (pool x previous, FLCG), each a CSR matrix over
    the ids in the order given, less the pairs in ``exclude``."""
    fp, chash = fingerprint, config_hash
    pool = list(pool)
    out: dict[str, Any] = {}
    if function in ("flmi", "flvmi"):
        q = list(target)
        # FLMI compares pool x pool and Q x pool coverage (min of the two), so both kernels
        # are divided by one scale, the largest positive utility of either; FLVMI has no
        # pool x pool kernel and keeps the query kernel's own scale.
        scale = None
        if function == "flmi":
            scale = max(utility_scale(store, fp, chash, pool, pool, exclude),
                        utility_scale(store, fp, chash, q, pool, exclude))
            if len(pool) > 1:
                out["kernel"] = utility_kernel_from_store(store, fp, chash, pool, pool,
                                                          scale, self_coverage, exclude).matrix
        # (n_query, n_pool): how much each pool item helps each target -> transposed below.
        qk = utility_kernel_from_store(store, fp, chash, q, pool, scale,
                                       exclude=exclude).matrix
        out["query_kernel"] = qk.T.tocsr()
    if function == "flcg" and previous:
        prev = list(previous)
        scale = max(utility_scale(store, fp, chash, pool, pool, exclude),
                    utility_scale(store, fp, chash, pool, prev, exclude))
        out["kernel"] = utility_kernel_from_store(store, fp, chash, pool, pool,
                                                  scale, self_coverage, exclude).matrix
        out["private_kernel"] = utility_kernel_from_store(store, fp, chash, pool, prev, scale,
                                                          exclude=exclude).matrix
        return out
    # facility location, graph cut, and FLCG without previous data (the stage refuses it;
    # the app may meet a selection whose parent is gone): pool x pool at its own scale
    if "kernel" not in out and function != "flvmi":
        if len(pool) > 1:
            out["kernel"] = utility_kernel_from_store(store, fp, chash, pool, pool,
                                                      self_coverage=self_coverage,
                                                      exclude=exclude).matrix
        else:
            out["kernel"] = sp.csr_matrix(np.ones((1, 1), dtype=np.float32))
    return out


def rank_delift(ctx: StageContext) -> Ranked:
    """DELIFT on a sparse utility kernel that asks for the evidence it lacks.

    1. Score the stage's candidate graph (kNN pairs, hub columns) and build the kernels.
    2. Leave out harmful examples (``spec.harm``; ``selection.evidence_rules.harmful_columns``).
    3. Greedy; when picks start to come at zero gain before the budget is filled, score
       more pairs where the kernel is blind (the rows in most need, against their most
       similar unscored candidates), at most ``options.expand`` times the graph's pairs in
       all, and run greedy again (``curator.stages.evidence``).
    4. A zero-gain tail that remains is ordered by utility evidence (candidates' mean
       utility), never by embedding similarity alone.
    """
    from curator.stages.evidence import EvidenceLoop

    options, lm, spec = ctx.options, ctx.lm, ctx.spec
    function = canonical_function(spec.resolved_function)
    config = kernel_config(ctx)
    notes: list[str] = []
    if ctx.auto_hubs and options.hubs:
        notes.append(f"scored the {options.hubs} hub examples against every target as well: "
                     f"the budget ({ctx.n_select} of {ctx.n_pool}) is at most "
                     f"{AUTO_HUBS_MAX_SHARE:.0%} of the pool (scoring.hubs: auto)")
    kernels, runs = utility_kernels(ctx, function)
    loop = EvidenceLoop(ctx, function, kernels, runs,
                        rescore=lambda exclude: kernels_from_store(ctx, function, exclude))
    ranking, gains, objective = loop.run()
    config["utility_config"] = utility_config(lm, options).config_hash()
    config["self_coverage"] = spec.self_coverage
    config.update(loop.record())
    # what the kernels held (stored pairs of other stages count too): two selections
    # with equal settings but different store histories differ here
    config["kernel_nnz"] = {name: int(m.nnz) for name, m in loop.kernels.items()
                            if m is not None}
    notes += loop.notes()
    return Ranked(ranking, gains, objective, function, loop.runs, config=config, notes=notes)
