"""Cross-fitting: with no target set, no sample is scored against a direction that
contains its own gradient.

Without a target set the validation direction v_new is the mean gradient of a held-out
slice H of the pool, and H stays in the pool (it is scored and can be picked). Scored
against the mean over all of H, a held-out sample h gets ``<v_H, g_h>``, which contains
``|g_h|^2 / |H|``: its own squared gradient norm, a term no other sample gets. When per-sample
gradients are close to orthogonal (as in large models) that term dominates; in a toy pool of
1000 samples with pairwise gradient cosine 0.01 and 10% held out, 99 of the top 100 picks
were held-out samples.

The fix here is K-fold cross-fitting. The pool is split into K folds, each holding about
1/K of H (``crossfit_folds``); fold k's samples are scored against ``v_{-k}``, the mean
gradient of the held-out samples of the *other* folds. Every sample is then scored against
a direction built from about (K-1)/K of H that is independent of its own gradient, so the
scores of held-out and other samples have the same expectation and the same spread (all
directions have about the same number of samples). Excluding H from scoring instead would
make 10% of the pool unselectable, a bias of its own.

Cost: the held-out gradients are summed per fold in the same passes as one mean (the K
fold directions come from ``total - fold`` sums), and the hook scoring runs over each fold's
own samples, so the pool is still scored once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.engine import LOCAL, ScoringEngine
from curator.scoring.gradients.hooks import SampleScores
from curator.scoring.gradients.scope import ScopedModule

DEFAULT_FOLDS = 5


def crossfit_folds(n: int, holdout: Sequence[int], n_folds: int = DEFAULT_FOLDS,
                   seed: int = 0) -> list[list[int]]:
    """A seeded partition of ``range(n)`` into K = min(n_folds, |holdout|) folds, each with
    about |holdout| / K held-out samples and (n - |holdout|) / K others. Folds are sorted
    lists of pool indices; a fold's direction is built from the OTHER folds' held-out
    samples, so K >= 2 is needed (at least two held-out samples)."""
    hold = sorted(set(int(i) for i in holdout))
    if len(hold) < 2:
        raise ValueError("cross-fitting needs at least two held-out samples")
    if hold[0] < 0 or hold[-1] >= n:
        raise ValueError("held-out indices run outside the pool")
    if n_folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {n_folds}")
    k = min(n_folds, len(hold))
    gen = torch.Generator().manual_seed(seed + 7)
    hset = set(hold)
    rest = [i for i in range(n) if i not in hset]
    folds: list[list[int]] = [[] for _ in range(k)]
    for group in (hold, rest):
        order = torch.randperm(len(group), generator=gen).tolist()
        for j, pos in enumerate(order):
            folds[j % k].append(group[pos])
    return [sorted(f) for f in folds]


def scores_by_fold(lm: LoadedModel, samples: Sequence[Sample],
                   directions: Sequence[Mapping[str, torch.Tensor]],
                   folds: Sequence[Sequence[int]], scope: Sequence[ScopedModule],
                   batch_size: int = 16, max_length: int | None = None,
                   progress: bool = False, engine: ScoringEngine = LOCAL,
                   norms: bool = False) -> SampleScores:
    """``<directions[k], g_n>`` for the samples n of fold k, assembled over the pool
    (one hook pass per fold over that fold's samples only, on ``engine``).
    ``norms``: also ``|g_n|`` (``hook_scores``)."""
    if len(directions) != len(folds):
        raise ValueError(f"{len(directions)} directions for {len(folds)} folds")
    scope = list(scope)
    N, M = len(samples), len(scope)
    total = np.full(N, np.nan)
    per_module = np.full((N, M), np.nan)
    sq = np.full(N, np.nan) if norms else None
    skipped: list[int] = []
    for u, idx in zip(directions, folds, strict=True):
        idx = list(idx)
        if not idx:
            continue
        part = [samples[i] for i in idx]
        s = engine.sample_scores(lm, part, u, scope, batch_size, max_length, progress, norms)
        total[idx] = s.total
        per_module[idx] = s.per_module
        if sq is not None:
            sq[idx] = s.norms
        skipped.extend(idx[j] for j in s.skipped)
    return SampleScores(total, per_module, [s.name for s in scope], sorted(skipped), sq)
