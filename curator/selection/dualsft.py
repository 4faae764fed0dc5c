"""DualSFT's rules over gradient arrays (numpy): the parameter mask, the data ranking, the
unit-normalised utilities. The passes that produce the arrays (warm-up, gradient
statistics, hook scores) and the torch side of the masks (per-fold masks, masked
directions) are ``curator.stages.gradient_passes``.

DualSFT: a parameter mask and a data subset from one gradient interaction matrix.

``M[n, p] = u[p] * g_n[p]``; its column sums ``phi_param = u * G`` rank parameters, its row
sums ``phi_data[n] = <u, g_n>`` rank samples (computed by hooks, never forming M).
Co-extraction re-scores the samples on the masked coordinates only (``u * mask``), so the
subset is the data that helps the parameters that will actually be trained.

Mask allocation rule (``allocate_mask``), for a budget fraction rho over the scope's N
coordinates, ranking by the *rank score*: signed phi_param by default (``use_abs=False``,
as the reference: a coordinate with phi < 0 is predicted to RAISE the validation loss when
trained, so it must not outrank one with a smaller positive phi), or |phi_param|:
1. K = max(1, round(rho * N)) coordinates are selected in total, exactly.
2. A share ``spread`` of K (floor(spread * K)) is divided evenly over *cells*, one cell per
   (layer, module kind) pair, e.g. ("model.layers.3", "self_attn.q_proj"); weight and bias
   of a module share a cell (the caller names each parameter's cell: ``cell_of``). Water-filling: cells are visited from smallest to largest, each
   takes floor(remaining / cells left) but never more than its size, so a small cell's
   unused quota passes to larger ones. Each cell keeps its own top entries by rank score.
3. The rest of K goes to the global top by rank score among coordinates not yet selected.
So every layer and module kind gets at least its even share of ``spread * K`` (when it has
that many coordinates), and the remainder follows the scores. ``spread`` is 0 by default
(the reference's quotas are off by default): a plain global top-K.

With no target set, data utilities are cross-fitted (``curator.scoring.gradients.crossfit``):
each fold of the pool is scored against the direction u_k built from the other folds'
held-out samples, so no held-out sample is scored against its own gradient. Co-extraction
masks fold k's direction with fold k's own mask, allocated from ``u_k * G``
(``curator.stages.gradient_passes.fold_masks``): a mask built from the whole slice's u would let a held-out sample's own
gradient choose the coordinates its score is read on. The mask that is stored and trained
(a parameter ranking, not a per-sample score) uses u from the whole held-out slice.

``unit_scores``: data utilities ``<u, g_n> / |g_n|`` (the ``normalize`` "unit" option), so
short and high-loss samples, whose gradients are large, are not favoured for their norm
alone (LESS normalises for this reason); the mask is unchanged.
"""


from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np

from curator.budget import parse_budget

BoolMask = dict[str, np.ndarray]  # parameter name -> bool array shaped like the parameter


def resolve_count(budget: int | float | str, n: int, what: str) -> int:
    """``parse_budget`` (a count, a fraction in (0, 1] or a percentage of n) with errors that
    say which budget was wrong. An int 1 is one sample, a float 1.0 the whole pool."""
    try:
        return parse_budget(budget, n)
    except ValueError as exc:
        raise ValueError(f"{what} budget: {exc}") from None


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of a flat array (ties at the k-th value: lowest
    indices first), without sorting it: one partition, then two comparisons."""
    n = score.shape[0]
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(score, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(score > kth)
    return np.concatenate([above, np.flatnonzero(score == kth)[:k - above.size]])


def allocate_mask(phi_param: Mapping[str, np.ndarray], budget: float, spread: float = 0.0,
                  use_abs: bool = False,
                  cell_of: Callable[[str], Hashable] | None = None) -> BoolMask:
    """Top-phi_param mask (signed by default; ``use_abs``: by |phi_param|), optionally
    with a share ``spread`` of the budget spread evenly over cells (the rule is in the
    module docstring; ``cell_of`` maps a parameter name to its cell, default one cell per
    parameter). Exactly K = max(1, round(budget * N)) coordinates are selected."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    names = list(phi_param)
    if not names:
        raise ValueError("phi_param is empty")
    shapes = [np.shape(phi_param[n]) for n in names]
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    N = sum(sizes)
    if isinstance(budget, bool) or not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"parameter budget must be a fraction in (0, 1], got {budget!r}")
    K = max(1, min(N, round(float(budget) * N)))

    # One flat fp32 score vector over the scope. Signed scores are ranked as they are (no
    # shift to make them non-negative: tiny phi values would lose their order in fp32 next
    # to a large negative minimum).
    flat = np.concatenate([np.asarray(phi_param[n], dtype=np.float32).reshape(-1)
                           for n in names])
    flat = np.nan_to_num(flat, nan=0.0)  # +-inf -> +-max float: -inf only marks taken below
    score = np.abs(flat) if use_abs else flat
    taken = np.zeros(N, dtype=bool)
    offsets = np.cumsum([0] + sizes)

    cells: dict[Hashable, list[int]] = {}
    for i, n in enumerate(names):
        cells.setdefault(n if cell_of is None else cell_of(n), []).append(i)
    cell_idx = {key: np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members])
                for key, members in cells.items()}
    remaining = int(spread * K)
    order = sorted(cell_idx, key=lambda key: (cell_idx[key].size, key))
    for j, key in enumerate(order):
        idx = cell_idx[key]
        take = min(remaining // (len(order) - j), idx.size)
        if take > 0:
            taken[idx[top_k(score[idx], take)]] = True
            remaining -= take
    left = K - int(taken.sum())
    if left > 0:
        taken[top_k(np.where(taken, -np.inf, score), left)] = True

    return {n: taken[offsets[i]:offsets[i + 1]].reshape(shapes[i])
            for i, n in enumerate(names)}


def unit_scores(scores: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``<u, g_n> / |g_n|``; a zero gradient scores 0; NaN (skipped) stays NaN."""
    norms = np.asarray(norms, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, np.asarray(scores, dtype=float) / norms, 0.0)
    return np.where(np.isnan(scores) | np.isnan(norms), np.nan, out)


def rank_scores(scores: np.ndarray) -> list[int]:
    """Indices by descending score; NaN (skipped) last; ties by index (stable)."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return [int(i) for i in np.argsort(-key, kind="stable")]
