"""Greedy optimisers: naive (the reference), lazy and stochastic, over any SetFunction.

An optimiser only calls the function's three operations (initialize, gains, update). Each has
two implementations with the same pick rule: a plain numpy one here, which tests use as the
reference, and a compiled one in :mod:`curator.selection._jit`, which is the default.

The pick rule: the largest ``gain / cost`` among candidates that still fit the budget, ties to
the lower index (costs are ones for a count budget, so this is the largest gain). With costs,
the greedy set is compared with the best single candidate that fits, and the better is kept:
ratio greedy alone can be arbitrarily bad on a knapsack (one big valuable item), the best of
the two is within a constant factor of optimal (Khuller, Moss and Naor 1999; Leskovec et al. 2007).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from curator.selection import _jit
from curator.selection.functions import SetFunction

OPTIMIZERS = ("naive", "lazy", "stochastic")
BACKENDS = ("numba", "numpy")


@dataclass
class Picks:
    """What an optimiser returns: candidates in pick order and the marginal gain of each."""

    ranking: np.ndarray  # (k,) int64
    gains: np.ndarray  # (k,) float64
    n_evaluations: int  # gain evaluations made: the optimiser's cost, for benchmarks
    singleton: bool = False  # cost budget: the best single candidate beat the greedy set


def _fits(cost: float, remaining: float) -> bool:
    return cost <= remaining + _jit._COST_SLACK * max(1.0, abs(remaining))


# ---- numpy reference implementations ----------------------------------------------------------


def _naive_numpy(f: SetFunction, selected, costs, budget, max_picks, **_) -> Picks:
    ranking, gains, evals = [], [], 0
    remaining = budget
    while len(ranking) < max_picks:
        cand = np.flatnonzero(
            ~selected & (costs <= remaining + _jit._COST_SLACK * max(1.0, abs(remaining)))
        )
        if cand.size == 0:
            break
        g = f.gains(cand)
        evals += cand.size
        best = int(np.argmax(g / costs[cand]))  # first maximum = lowest index on ties
        j = int(cand[best])
        f.update(j)
        selected[j] = True
        remaining -= costs[j]
        ranking.append(j)
        gains.append(float(g[best]))
    return Picks(np.array(ranking, dtype=np.int64), np.array(gains), evals)


def _lazy_numpy(f: SetFunction, selected, costs, budget, max_picks, **_) -> Picks:
    cand = np.flatnonzero(~selected)
    keys = f.gains(cand) / costs[cand]
    heap = [(-float(k), int(j)) for k, j in zip(keys, cand, strict=True)]  # (-key, index)
    heapq.heapify(heap)
    evals = len(heap)
    ranking, gains = [], []
    remaining = budget
    while heap and len(ranking) < max_picks:
        _, j = heap[0]
        if not _fits(costs[j], remaining):
            heapq.heappop(heap)
            continue
        g = float(f.gains(np.array([j]))[0])
        evals += 1
        key = g / costs[j]
        heapq.heappop(heap)
        if not heap or (-key, j) < heap[0]:  # stale keys are upper bounds: j beats them all
            f.update(j)
            selected[j] = True
            remaining -= costs[j]
            ranking.append(j)
            gains.append(g)
        else:
            heapq.heappush(heap, (-key, j))
    return Picks(np.array(ranking, dtype=np.int64), np.array(gains), evals)


def _stochastic_numpy(
    f: SetFunction, selected, costs, budget, max_picks, *, sample_size: int, seed: int, **_
) -> Picks:
    # The same draws as the compiled version: numba's np.random and the legacy RandomState are
    # both MT19937 seeded the same way, so a seed gives the same picks on either backend.
    rng = np.random.RandomState(seed)
    pool = np.flatnonzero(~selected).astype(np.int64)
    m = pool.size
    ranking, gains, evals = [], [], 0
    remaining = budget
    while len(ranking) < max_picks and m > 0:
        t = 0
        while t < sample_size and t < m:
            r = t + int(rng.random_sample() * (m - t))
            pool[t], pool[r] = pool[r], pool[t]
            if not _fits(costs[pool[t]], remaining):
                m -= 1
                pool[t], pool[m] = pool[m], pool[t]
                continue
            t += 1
        if t == 0:
            break
        sample = pool[:t]
        g = f.gains(sample)
        evals += t
        keys = g / costs[sample]
        order = np.lexsort((sample, -keys))  # largest key, then lowest index
        best_t = int(order[0])
        j = int(sample[best_t])
        f.update(j)
        selected[j] = True
        remaining -= costs[j]
        ranking.append(j)
        gains.append(float(g[best_t]))
        m -= 1
        pool[best_t], pool[m] = pool[m], pool[best_t]
    return Picks(np.array(ranking, dtype=np.int64), np.array(gains), evals)


_NUMPY = {"naive": _naive_numpy, "lazy": _lazy_numpy, "stochastic": _stochastic_numpy}


# ---- dispatch -----------------------------------------------------------------------------------


def maximize(
    f: SetFunction,
    max_picks: int,
    *,
    optimizer: str = "lazy",
    costs: np.ndarray | None = None,
    cost_budget: float | None = None,
    initial_subset: np.ndarray | None = None,
    seed: int = 0,
    epsilon: float = 0.01,
    backend: str = "numba",
) -> Picks:
    """Greedily add up to ``max_picks`` candidates (and, with ``costs``, up to ``cost_budget``).

    ``initial_subset`` is applied first and never picked again; gains are conditioned on it.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    n = f.n_candidates
    cost_aware = costs is not None
    unit = np.ones(n, dtype=np.float64)
    costs_ = unit if costs is None else np.ascontiguousarray(costs, dtype=np.float64)
    budget = float(max_picks) if cost_budget is None else float(cost_budget)

    f.initialize(initial_subset)
    selected = np.zeros(n, dtype=np.bool_)
    if initial_subset is not None:
        selected[np.asarray(initial_subset, dtype=np.int64)] = True
    n_available = int(n - selected.sum())

    # Best single candidate that fits, for the cost-aware safeguard (gains on the initial state).
    singleton: tuple[int, float] | None = None
    if cost_aware:
        avail = np.flatnonzero(~selected & (costs_ <= budget))
        if avail.size:
            g0 = _all_gains(f, avail, backend)
            best = int(np.argmax(g0))
            singleton = (int(avail[best]), float(g0[best]))

    if cost_aware:
        expected_picks = budget / max(
            float(np.mean(costs_[~selected])) if n_available else 1.0, 1e-300
        )
    else:
        expected_picks = float(max_picks)
    sample_size = _jit.stochastic_sample_size(
        n_available, min(expected_picks, n_available), epsilon
    )

    if backend == "numba":
        st = f.jit_state()
        if optimizer == "naive":
            r, g, ev = _jit.naive_greedy(st, selected, costs_, budget, max_picks)
        elif optimizer == "lazy":
            r, g, ev = _jit.lazy_greedy(st, selected, costs_, budget, max_picks)
        else:
            r, g, ev = _jit.stochastic_greedy(
                st, selected, costs_, budget, max_picks, sample_size, seed
            )
        picks = Picks(r, g, int(ev))
    else:
        picks = _NUMPY[optimizer](
            f, selected, costs_, budget, max_picks, sample_size=sample_size, seed=seed
        )

    if singleton is not None and singleton[1] > float(picks.gains.sum()):
        j, g = singleton
        f.initialize(initial_subset)
        f.update(j)
        picks = Picks(np.array([j], dtype=np.int64), np.array([g]), picks.n_evaluations, True)
    return picks


def _all_gains(f: SetFunction, candidates: np.ndarray, backend: str) -> np.ndarray:
    if backend == "numpy":
        return f.gains(candidates)
    out = np.empty(f.n_candidates, dtype=np.float64)
    _jit.all_gains(f.jit_state(), out)
    return out[candidates]
