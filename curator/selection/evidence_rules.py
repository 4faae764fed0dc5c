"""Where a sparse utility kernel needs more evidence, and what the evidence says about harm.

A DELIFT kernel holds only the pairs that were scored (a kNN graph, maybe hub columns).
Greedy maximisation on it runs out of information before a large budget is filled: every
candidate left has gain 0 because none of its pairs with the still-uncovered rows was ever
scored, not because it would not help. These helpers decide which pairs to score next and
how to rank candidates when evidence stays missing; they are pure numpy over ids, kernels
and embeddings, so the stage layer (which owns the store and the model) runs the loop:
select -> find the zero-gain tail -> propose pairs -> score them -> select again.

Negative utilities are evidence too: an example that makes the targets it was scored with
worse on average is *harmful* (a wrong, truncated or swapped response shown in context
misleads the model). The kernels drop utilities <= 0, so without a filter such an example
costs nothing; ``harmful_columns`` names them so the stage can take them out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

ZERO_GAIN = 1e-12


def first_zero_gain(gains: Sequence[float] | np.ndarray, tol: float = ZERO_GAIN) -> int:
    """Index of the first pick made at (numerically) zero gain; ``len(gains)`` if none."""
    g = np.asarray(gains, dtype=float)
    hit = np.flatnonzero(g <= tol)
    return int(hit[0]) if hit.size else len(g)


def rows_by_need(kernel: sp.spmatrix | np.ndarray, head: Sequence[int],
                 floor: np.ndarray | None = None, ceiling: np.ndarray | None = None,
                 seed: int = 0) -> np.ndarray:
    """Rows (items to cover) whose credit new pairs can still raise, least covered first.

    A row's coverage by ``head`` is ``max_{a in head} kernel[i, a]``; it can gain when that
    is below ``ceiling`` (what the function credits a row at most; default 1) and ``floor``
    is below ``ceiling`` too. Rows are ordered by coverage minus ``floor`` (rows nothing
    covers first), ties in a seeded random order. ``kernel`` is (n_rows, n_cols) with
    candidates as columns. FLCG passes ``floor = nu * max_p P[i, p]`` (a row the previous
    data covers earns only what a pick adds above that); submodlib's FLMI passes
    ``ceiling = eta * max_q Q[i, q]`` (a row no query cares about earns nothing).
    """
    m = sp.csc_matrix(kernel)
    n_rows = m.shape[0]
    lo = np.zeros(n_rows) if floor is None else np.asarray(floor, dtype=float)
    hi = np.ones(n_rows) if ceiling is None else np.asarray(ceiling, dtype=float)
    if len(head) == 0:
        covered = np.zeros(n_rows)
    else:
        covered = np.asarray(m[:, np.asarray(head, dtype=np.int64)].max(axis=1).todense()).ravel()
    need = np.flatnonzero((lo < hi) & (covered < hi))
    tie = np.random.default_rng(seed).permutation(n_rows)[need]
    return need[np.lexsort((tie, np.maximum(covered, lo)[need] - lo[need]))]


def propose_pairs(row_emb: np.ndarray, col_emb: np.ndarray, rows: Sequence[int],
                  allowed_cols: Sequence[int], scored: set[tuple[int, int]], per_row: int,
                  same_ids: Sequence[tuple[int, int]] = (),
                  col_bonus: np.ndarray | None = None) -> list[tuple[int, int]]:
    """For each row in ``rows``, its ``per_row`` most similar columns (cosine of the
    embeddings) among ``allowed_cols`` whose pair with that row was never scored.

    Embeddings choose *which* pairs to measure next, never the selection itself: the pairs
    are scored with the model and only their utilities enter the kernel. ``col_bonus`` (one
    value per column) is added to the cosine before ranking: a model signal of each
    candidate (the quality prior's modular term), so embeddings are not the only judge of
    which pairs get measured. ``same_ids`` lists (row, col) positions that are the same
    sample (never a pair). Returns (row, col) index pairs, rows in the given order, columns
    highest first; ties by column index.
    """
    if per_row <= 0 or len(rows) == 0 or len(allowed_cols) == 0:
        return []
    cols = np.asarray(allowed_cols, dtype=np.int64)
    skip = set(scored) | set(same_ids)
    r_e = _unit(row_emb[np.asarray(rows, dtype=np.int64)])
    c_e = _unit(col_emb[cols])
    sims = r_e @ c_e.T                                         # (n_rows_probed, n_allowed)
    if col_bonus is not None:
        sims = sims + np.asarray(col_bonus, dtype=sims.dtype)[cols][None, :]
    out: list[tuple[int, int]] = []
    for i, r in enumerate(int(x) for x in rows):
        order = np.lexsort((cols, -sims[i]))                   # most similar, then lowest index
        taken = 0
        for j in order:
            c = int(cols[j])
            if (r, c) in skip:
                continue
            out.append((r, c))
            taken += 1
            if taken == per_row:
                break
    return out


def column_mean_utility(cols: Sequence[int], utilities: np.ndarray, n_cols: int,
                        scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean utility of each column (candidate example) over its scored pairs, divided by
    ``scale``, and the number of pairs. Columns with no pair get NaN and 0. ``cols`` and
    ``utilities`` are the valid, non-self pairs only."""
    c = np.asarray(cols, dtype=np.int64)
    u = np.asarray(utilities, dtype=np.float64)
    count = np.bincount(c, minlength=n_cols).astype(np.int64)
    total = np.bincount(c, weights=u, minlength=n_cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1) / scale, np.nan)
    return mean, count


def harmful_columns(mean: np.ndarray, count: np.ndarray, min_pairs: int = 2,
                    threshold: float = 0.0) -> np.ndarray:
    """Columns whose mean scaled utility over at least ``min_pairs`` scored pairs is below
    ``-threshold``: examples that, shown in context, made their targets worse on average."""
    with np.errstate(invalid="ignore"):
        bad = (count >= min_pairs) & (np.nan_to_num(mean, nan=0.0) < -threshold)
    return np.flatnonzero(bad)


def evidence_order(candidates: Sequence[int], mean: np.ndarray, harmful: Sequence[int],
                   seed: int = 0) -> np.ndarray:
    """Order for a tail that the kernels cannot rank (every gain is zero): candidates with
    a positive mean utility first (best first), then those never scored (in a seeded random
    order: no evidence either way), then the rest by mean utility, harmful ones last."""
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.size == 0:
        return cand
    bad = np.isin(cand, np.asarray(harmful, dtype=np.int64))
    m = mean[cand]
    unscored = np.isnan(m)
    jitter = np.random.default_rng(seed).permutation(cand.size)
    tier = np.where(bad, 3, np.where(unscored, 1, np.where(m > 0, 0, 2)))
    key_value = np.where(unscored, 0.0, -np.nan_to_num(m))
    key_jitter = np.where(unscored, jitter, 0)
    order = np.lexsort((cand, key_jitter, key_value, tier))
    return cand[order]


def without_columns(kernel: sp.spmatrix | np.ndarray | None, cols: Sequence[int],
                    axis: int = 1) -> sp.csr_matrix | np.ndarray | None:
    """The kernel with the given candidates' entries set to 0 (``axis`` 1: candidates are
    columns; 0: candidates are rows, as in FLVMI's (n_candidates, n_query) query kernel)."""
    if kernel is None or len(cols) == 0:
        return kernel
    n = kernel.shape[axis]
    keep = np.ones(n, dtype=np.float32)
    keep[np.asarray(cols, dtype=np.int64)] = 0.0
    d = sp.diags(keep)
    if sp.issparse(kernel):
        out = (kernel @ d if axis == 1 else d @ kernel).tocsr()
        out.eliminate_zeros()
        return out
    return kernel * (keep[None, :] if axis == 1 else keep[:, None])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
