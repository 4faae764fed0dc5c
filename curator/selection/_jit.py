"""Compiled hot loops: the three function operations and the greedy optimisers over them.

Every function in :mod:`curator.selection.functions` exposes its state as one flat tuple
(see ``JitState``) so that a single compiled copy of each optimiser serves all functions:
numba specialises on argument types, and one layout means one compilation (cached on disk
with ``cache=True``) instead of one per function and optimiser.

State tuple ``st`` (all arrays C-contiguous):

- ``st[0]`` kind: 0 = coverage family (FL, FLMI, FLVMI, FLCG), 1 = graph cut.
- ``st[1:4]`` CSC of the (transformed) kernel: ``indptr`` (n_cand + 1,) int64,
  ``indices`` (nnz,) int64 = rows the candidate covers, ``data`` (nnz,) float64.
  Column ``j`` lists the rows a pick of ``j`` can change, so an update touches only those.
- ``st[4]`` ``cur`` (n_rows,) float64, mutated in place. Coverage: best similarity of each
  covered row to the selection so far. Graph cut: ``sum_{a in A} S[a, j] + S[j, a]``.
- ``st[5]`` ``modular`` (n_cand,) float64: a per-candidate term added to every gain.
- ``st[6:9]`` CSR of the kernel (graph cut only, empty otherwise): row ``a`` lists ``S[a, l]``.
- ``st[9]`` ``lam`` float64: graph cut's lambda (unused by coverage).

The gain of candidate ``j``:

- coverage: ``modular[j] + sum_{i in col j} max(S[i, j] - cur[i], 0)``;
- graph cut: ``modular[j] - lam * cur[j]`` with ``modular[j] = sum_i S[i, j] - lam * S[j, j]``.

Optimisers rank by ``gain / cost`` (costs are all ones for a count budget, and ``g / 1.0 == g``
exactly, so count and cost budgets share one code path) and break ties by the lower index, so
naive and lazy greedy make exactly the same picks.
"""

from __future__ import annotations

import math

import numba
import numpy as np

KIND_COVERAGE = 0
KIND_GRAPH_CUT = 1

# Slack when testing whether a cost still fits, so sums of float costs do not reject an exact fit.
_COST_SLACK = 1e-9


@numba.njit(cache=True)
def gain(st, j):
    """Marginal gain of adding candidate ``j`` to the current selection."""
    kind, indptr, indices, data, cur, modular = st[0], st[1], st[2], st[3], st[4], st[5]
    if kind == KIND_COVERAGE:
        g = 0.0
        for e in range(indptr[j], indptr[j + 1]):
            d = data[e] - cur[indices[e]]
            if d > 0.0:
                g += d
        return modular[j] + g
    return modular[j] - st[9] * cur[j]


@numba.njit(cache=True)
def update(st, j):
    """Add candidate ``j`` to the selection: touch only the rows its column (and row) covers."""
    kind, indptr, indices, data, cur = st[0], st[1], st[2], st[3], st[4]
    if kind == KIND_COVERAGE:
        for e in range(indptr[j], indptr[j + 1]):
            i = indices[e]
            if data[e] > cur[i]:
                cur[i] = data[e]
    else:
        # cur[l] += S[l, j] (column j) and S[j, l] (row j)
        for e in range(indptr[j], indptr[j + 1]):
            cur[indices[e]] += data[e]
        rptr, rind, rdat = st[6], st[7], st[8]
        for e in range(rptr[j], rptr[j + 1]):
            cur[rind[e]] += rdat[e]


@numba.njit(cache=True)
def all_gains(st, out):
    """Gains of every candidate into ``out`` (n_cand,)."""
    for j in range(out.shape[0]):
        out[j] = gain(st, j)


@numba.njit(cache=True)
def evaluate(st, subset, n_rows):
    """f(subset) from scratch, without touching ``st[4]``."""
    kind, indptr, indices, data, modular = st[0], st[1], st[2], st[3], st[5]
    total = 0.0
    if kind == KIND_COVERAGE:
        best = np.zeros(n_rows)
        for a in subset:
            total += modular[a]
            for e in range(indptr[a], indptr[a + 1]):
                if data[e] > best[indices[e]]:
                    best[indices[e]] = data[e]
        return total + best.sum()
    # graph cut: sum_{i, a in A} S[i, a] - lam * sum_{a, b in A} S[a, b]
    lam = st[9]
    inside = np.zeros(n_rows, dtype=np.bool_)
    for a in subset:
        inside[a] = True
    cut = 0.0
    within = 0.0
    for a in subset:
        for e in range(indptr[a], indptr[a + 1]):
            cut += data[e]
            if inside[indices[e]]:
                within += data[e]
    return cut - lam * within


@numba.njit(cache=True)
def _fits(cost, remaining):
    return cost <= remaining + _COST_SLACK * max(1.0, abs(remaining))


@numba.njit(cache=True)
def _better(k1, i1, k2, i2):
    """Is (key k1, index i1) ahead of (k2, i2)? Larger key first, then lower index."""
    return k1 > k2 or (k1 == k2 and i1 < i2)


# ---- a binary max-heap over (key, index) pairs, stored in two arrays -------------------------


@numba.njit(cache=True)
def _sift_down(keys, idx, size, pos):
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        best = left
        right = left + 1
        if right < size and _better(keys[right], idx[right], keys[left], idx[left]):
            best = right
        if _better(keys[best], idx[best], keys[pos], idx[pos]):
            keys[pos], keys[best] = keys[best], keys[pos]
            idx[pos], idx[best] = idx[best], idx[pos]
            pos = best
        else:
            return


@numba.njit(cache=True)
def _sift_up(keys, idx, pos):
    while pos > 0:
        parent = (pos - 1) // 2
        if _better(keys[pos], idx[pos], keys[parent], idx[parent]):
            keys[pos], keys[parent] = keys[parent], keys[pos]
            idx[pos], idx[parent] = idx[parent], idx[pos]
            pos = parent
        else:
            return


@numba.njit(cache=True)
def _heapify(keys, idx, size):
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(keys, idx, size, pos)


@numba.njit(cache=True)
def _pop(keys, idx, size):
    """Remove the top; return the new size."""
    size -= 1
    keys[0] = keys[size]
    idx[0] = idx[size]
    _sift_down(keys, idx, size, 0)
    return size


# ---- optimisers -------------------------------------------------------------------------------
# Each takes: st, selected (n_cand,) bool (initial subset already applied to st and marked),
# costs (n_cand,) float64, budget (total cost; a count when costs are ones), max_picks.
# Each returns (ranking int64, gains float64, n_gain_evaluations).


@numba.njit(cache=True)
def naive_greedy(st, selected, costs, budget, max_picks):
    n = selected.shape[0]
    ranking = np.empty(max_picks, dtype=np.int64)
    gains = np.empty(max_picks, dtype=np.float64)
    remaining = budget
    n_evals = 0
    k = 0
    while k < max_picks:
        best_j = -1
        best_key = -np.inf
        best_gain = 0.0
        for j in range(n):
            if selected[j] or not _fits(costs[j], remaining):
                continue
            g = gain(st, j)
            n_evals += 1
            key = g / costs[j]
            if best_j < 0 or key > best_key:  # ascending j: '>' keeps the lowest index on ties
                best_j, best_key, best_gain = j, key, g
        if best_j < 0:
            break
        update(st, best_j)
        selected[best_j] = True
        remaining -= costs[best_j]
        ranking[k] = best_j
        gains[k] = best_gain
        k += 1
    return ranking[:k], gains[:k], n_evals


@numba.njit(cache=True)
def lazy_greedy(st, selected, costs, budget, max_picks):
    """Minoux's accelerated greedy: stale gains are upper bounds (submodularity), so only the
    top of a max-heap needs a fresh gain; it is picked if it still beats the next bound."""
    n = selected.shape[0]
    keys = np.empty(n, dtype=np.float64)
    idx = np.empty(n, dtype=np.int64)
    size = 0
    for j in range(n):
        if not selected[j]:
            keys[size] = gain(st, j) / costs[j]
            idx[size] = j
            size += 1
    n_evals = size
    _heapify(keys, idx, size)
    ranking = np.empty(max_picks, dtype=np.int64)
    gains = np.empty(max_picks, dtype=np.float64)
    remaining = budget
    k = 0
    while k < max_picks and size > 0:
        j = idx[0]
        if not _fits(costs[j], remaining):
            size = _pop(keys, idx, size)  # the remaining budget only shrinks: drop for good
            continue
        g = gain(st, j)
        n_evals += 1
        key = g / costs[j]
        size = _pop(keys, idx, size)
        if size == 0 or _better(key, j, keys[0], idx[0]):
            update(st, j)
            selected[j] = True
            remaining -= costs[j]
            ranking[k] = j
            gains[k] = g
            k += 1
        else:
            keys[size] = key
            idx[size] = j
            size += 1
            _sift_up(keys, idx, size - 1)
    return ranking[:k], gains[:k], n_evals


@numba.njit(cache=True)
def stochastic_greedy(st, selected, costs, budget, max_picks, sample_size, seed):
    """Mirzasoleiman et al.'s stochastic greedy: each pick is the best of ``sample_size``
    candidates drawn without replacement from those left (a partial Fisher-Yates shuffle).
    Uses numba's own Mersenne Twister, seeded here, so a seed gives the same picks each run."""
    np.random.seed(seed)
    n = selected.shape[0]
    pool = np.empty(n, dtype=np.int64)
    m = 0
    for j in range(n):
        if not selected[j]:
            pool[m] = j
            m += 1
    ranking = np.empty(max_picks, dtype=np.int64)
    gains = np.empty(max_picks, dtype=np.float64)
    remaining = budget
    n_evals = 0
    k = 0
    while k < max_picks and m > 0:
        best_t = -1
        best_key = -np.inf
        best_gain = 0.0
        t = 0
        while t < sample_size and t < m:
            r = t + int(np.random.random() * (m - t))
            pool[t], pool[r] = pool[r], pool[t]
            j = pool[t]
            if not _fits(costs[j], remaining):
                m -= 1  # never fits again: remove it from the pool for good
                pool[t], pool[m] = pool[m], pool[t]
                continue
            g = gain(st, j)
            n_evals += 1
            key = g / costs[j]
            if best_t < 0 or _better(key, j, best_key, pool[best_t]):
                best_t, best_key, best_gain = t, key, g
            t += 1
        if best_t < 0:
            break
        j = pool[best_t]
        update(st, j)
        selected[j] = True
        remaining -= costs[j]
        ranking[k] = j
        gains[k] = best_gain
        k += 1
        m -= 1
        pool[best_t], pool[m] = pool[m], pool[best_t]
    return ranking[:k], gains[:k], n_evals


def stochastic_sample_size(n_available: int, n_picks: float, epsilon: float) -> int:
    """``ceil(n / k * ln(1 / epsilon))``, clamped to [1, n]: the sample that gives a
    (1 - 1/e - epsilon) guarantee in expectation."""
    if n_available <= 0:
        return 1
    n_picks = max(1.0, float(n_picks))
    s = math.ceil(n_available / n_picks * math.log(1.0 / epsilon))
    return int(min(max(s, 1), n_available))
