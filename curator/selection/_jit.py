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
def _swap(pool, pos, p, q):
    """Swap pool positions ``p`` and ``q``, keeping ``pos`` (candidate -> position) in step."""
    a = pool[p]
    b = pool[q]
    pool[p] = b
    pos[b] = p
    pool[q] = a
    pos[a] = q


@numba.njit(cache=True)
def stochastic_greedy(st, selected, costs, budget, max_picks, sample_size, seed, memory_evals):
    """Mirzasoleiman et al.'s stochastic greedy: each pick is the best of a uniform sample of
    ``sample_size`` remaining candidates (drawn without replacement, a partial Fisher-Yates
    shuffle), with three refinements that never pick worse than the sample alone:

    - lazy evaluation in the sample: a candidate's last exact gain is an upper bound on its
      gain now (submodularity), so a drawn candidate whose bound cannot beat the best so far is
      not evaluated (it could not be picked);
    - an alive pool: a candidate whose exact gain is <= 0 can never gain again, so it leaves
      the pool it is drawn from and is replaced by another draw; only when every candidate left
      is known to be dead are picks drawn from the dead ones (to fill a count budget);
    - memory (``memory_evals`` > 0): every evaluated candidate with a positive gain goes into a
      max-heap under its last gain, and before each sample the heap's top is re-evaluated
      lazily (Minoux), at most ``memory_evals`` times per pick; the best exact gain found
      there joins the sample's. A good candidate seen once is not forgotten, which is what
      heavy-tailed gains (FLCG) need; the cap keeps the cost of a pick at most
      ``sample_size + memory_evals`` evaluations (plus one per candidate found dead, once).

    Why the (1 - 1/e - epsilon) guarantee (in expectation, monotone f) survives: its proof only
    needs, at each step, that the pick gains at least the best of a uniform sample of size
    ``n / k * ln(1 / epsilon)`` from the candidates left. The pick here is the best of a
    superset (sample + exactly evaluated heap candidates; a skipped candidate could not have
    been the best); the draws until ``sample_size`` are counted contain the first
    ``sample_size`` of a uniform order of the alive pool; and the alive pool holds every
    candidate with a positive gain and is no larger than the candidates left. Gains only
    decrease, so a stale gain is an upper bound.

    Every recorded gain is exact (the pick's gain is evaluated at the current selection).
    Uses numba's own Mersenne Twister, seeded here, so a seed gives the same picks each run."""
    np.random.seed(seed)
    n = selected.shape[0]
    # pool[0:n_alive] alive, pool[n_alive:m] dead (gain known <= 0), pool[m:] picked or too costly
    pool = np.empty(n, dtype=np.int64)
    pos = np.empty(n, dtype=np.int64)
    m = 0
    for j in range(n):
        if not selected[j]:
            pool[m] = j
            pos[j] = m
            m += 1
    n_alive = m
    last = np.full(n, np.inf)  # last exact gain: an upper bound on the gain now (inf: never seen)
    stamp = np.full(n, -1, dtype=np.int64)  # the pick number at which ``last`` was computed
    in_heap = np.zeros(n, dtype=np.bool_)
    memory = memory_evals > 0
    hkeys = np.empty(n if memory else 0, dtype=np.float64)
    hidx = np.empty(n if memory else 0, dtype=np.int64)
    hsize = 0
    ranking = np.empty(max_picks, dtype=np.int64)
    gains = np.empty(max_picks, dtype=np.float64)
    remaining = budget
    n_evals = 0
    k = 0
    while k < max_picks and m > 0:
        best_j = -1
        best_key = -np.inf
        # 1. the remembered candidates: lazy greedy on the heap until its top is exact, or
        #    until ``memory_evals`` re-evaluations; the best exact gain found is kept
        reevals = 0
        while hsize > 0:
            j = hidx[0]
            if selected[j] or last[j] <= 0.0 or not _fits(costs[j], remaining):
                in_heap[j] = False
                hsize = _pop(hkeys, hidx, hsize)
                continue
            key = last[j] / costs[j]
            if hkeys[0] != key:  # a sample lowered its bound since it was pushed: re-sift
                hkeys[0] = key
                _sift_down(hkeys, hidx, hsize, 0)
                continue
            if stamp[j] == k:  # exact, and no other bound in the heap beats it
                if best_j < 0 or _better(key, j, best_key, best_j):
                    best_j = j
                    best_key = key
                break
            if reevals == memory_evals:
                break
            reevals += 1
            g = gain(st, j)
            n_evals += 1
            last[j] = g
            stamp[j] = k
            if g <= 0.0:
                if pos[j] < n_alive:  # dead: out of the alive pool (the heap pops it next)
                    n_alive -= 1
                    _swap(pool, pos, pos[j], n_alive)
            elif best_j < 0 or _better(g / costs[j], j, best_key, best_j):
                best_j = j
                best_key = g / costs[j]
        # 2. the sample, from the alive pool (from the dead ones once none is alive)
        dead_phase = n_alive == 0
        region = m if dead_phase else n_alive
        t = 0
        while t < sample_size and t < region:
            r = t + int(np.random.random() * (region - t))
            _swap(pool, pos, t, r)
            j = pool[t]
            if not _fits(costs[j], remaining):  # never fits again: out of the pool for good
                if not dead_phase:
                    n_alive -= 1
                    _swap(pool, pos, t, n_alive)
                    m -= 1
                    _swap(pool, pos, n_alive, m)
                    region = n_alive
                else:
                    m -= 1
                    _swap(pool, pos, t, m)
                    region = m
                continue
            if best_j >= 0 and _better(best_key, best_j, last[j] / costs[j], j):
                t += 1  # its bound cannot beat the best: no need to evaluate it
                continue
            if stamp[j] != k:
                last[j] = gain(st, j)
                n_evals += 1
                stamp[j] = k
            g = last[j]
            if g <= 0.0 and not dead_phase:  # dead: leaves the pool, and another is drawn
                n_alive -= 1
                _swap(pool, pos, t, n_alive)
                region = n_alive
                continue
            key = g / costs[j]
            if best_j < 0 or _better(key, j, best_key, best_j):
                best_j = j
                best_key = key
            if memory and g > 0.0 and not in_heap[j]:
                hkeys[hsize] = key
                hidx[hsize] = j
                in_heap[j] = True
                hsize += 1
                _sift_up(hkeys, hidx, hsize - 1)
            t += 1
        if best_j < 0:
            if dead_phase:
                break  # nothing left fits
            continue  # every draw was dead or too costly: draw again
        j = best_j
        update(st, j)
        selected[j] = True
        remaining -= costs[j]
        ranking[k] = j
        gains[k] = last[j]  # exact: evaluated at this pick
        k += 1
        p = pos[j]
        if p < n_alive:
            n_alive -= 1
            _swap(pool, pos, p, n_alive)
            p = n_alive
        m -= 1
        _swap(pool, pos, p, m)
    return ranking[:k], gains[:k], n_evals


def stochastic_sample_size(n_available: int, n_picks: float, epsilon: float) -> int:
    """``ceil(n / k * ln(1 / epsilon))``, clamped to [1, n]: the sample that gives a
    (1 - 1/e - epsilon) guarantee in expectation."""
    if n_available <= 0:
        return 1
    n_picks = max(1.0, float(n_picks))
    s = math.ceil(n_available / n_picks * math.log(1.0 / epsilon))
    return int(min(max(s, 1), n_available))
