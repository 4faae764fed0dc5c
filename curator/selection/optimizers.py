"""Greedy optimisers: naive (the reference), lazy and stochastic, over any SetFunction.

An optimiser only calls the function's three operations (initialize, gains, update). Each has
two implementations with the same pick rule: a plain numpy one here, which tests use as the
reference, and a compiled one in :mod:`curator.selection._jit`, which is the default.

The pick rule: the largest ``gain / cost`` among candidates that still fit the budget, ties to
the lower index (costs are ones for a count budget, so this is the largest gain). With costs,
the greedy set is compared with the best single candidate that fits, and the better is kept:
ratio greedy alone can be arbitrarily bad on a knapsack (one big valuable item), the best of
the two is within a constant factor of optimal (Khuller, Moss and Naor 1999; Leskovec et al. 2007).

Stochastic greedy applies the same rule to a uniform random sample of the candidates left
(Mirzasoleiman et al. 2015), plus, by default, the best of the candidates it has already
evaluated, searched lazily within a few evaluations; see :func:`curator.selection._jit.stochastic_greedy`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from curator.selection import _jit
from curator.selection.functions import SetFunction
from curator.vocabulary import OPTIMIZERS

# Stochastic greedy's memory: re-evaluations of remembered candidates allowed per pick (0: off).
# On bench/bench_selection.py's kernels (N = 10k to 1M) 8 brings every function within 1.2% of
# lazy greedy (FLCG from -3.2..-3.7% to -1.0..-1.1%), for 7-8% more gain evaluations than the
# sample alone on facility location and fewer on FLCG (bench/results/selection.md).
STOCHASTIC_MEMORY_EVALS = 8
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
    f: SetFunction,
    selected,
    costs,
    budget,
    max_picks,
    *,
    sample_size: int,
    seed: int,
    memory_evals: int = 0,
    **_,
) -> Picks:
    """Step for step the compiled ``_jit.stochastic_greedy`` (see there for the method).

    The same draws as the compiled version: numba's np.random and the legacy RandomState are
    both MT19937 seeded the same way, so a seed gives the same picks on either backend. The
    heap is heapq's over (-key, index); only its top is ever read, and the top of a set of
    distinct (key, index) pairs does not depend on the heap's layout.
    """
    rng = np.random.RandomState(seed)
    n = selected.shape[0]
    pool = np.flatnonzero(~selected).astype(np.int64)
    pos = np.zeros(n, dtype=np.int64)
    pos[pool] = np.arange(pool.size)
    m = n_alive = int(pool.size)
    last = np.full(n, np.inf)
    stamp = np.full(n, -1, dtype=np.int64)
    in_heap = np.zeros(n, dtype=bool)
    heap: list[tuple[float, int]] = []

    def swap(p: int, q: int) -> None:
        a, b = int(pool[p]), int(pool[q])
        pool[p], pos[b] = b, p
        pool[q], pos[a] = a, q

    def evaluate(j: int, k: int) -> float:
        last[j] = float(f.gains(np.array([j]))[0])
        stamp[j] = k
        return float(last[j])

    ranking, gains, evals = [], [], 0
    remaining = budget
    while len(ranking) < max_picks and m > 0:
        k = len(ranking)
        best_j, best_key = -1, -np.inf
        reevals = 0
        while heap:
            neg_key, j = heap[0]
            if selected[j] or last[j] <= 0.0 or not _fits(costs[j], remaining):
                in_heap[j] = False
                heapq.heappop(heap)
                continue
            key = last[j] / costs[j]
            if -neg_key != key:
                heapq.heapreplace(heap, (-key, j))
                continue
            if stamp[j] == k:
                if best_j < 0 or key > best_key or (key == best_key and j < best_j):
                    best_j, best_key = j, key
                break
            if reevals == memory_evals:
                break
            reevals += 1
            g = evaluate(j, k)
            evals += 1
            if g <= 0.0:
                if pos[j] < n_alive:
                    n_alive -= 1
                    swap(int(pos[j]), n_alive)
            elif best_j < 0 or g / costs[j] > best_key or (g / costs[j] == best_key and j < best_j):
                best_j, best_key = j, g / costs[j]
        dead_phase = n_alive == 0
        region = m if dead_phase else n_alive
        t = 0
        while t < sample_size and t < region:
            r = t + int(rng.random_sample() * (region - t))
            swap(t, r)
            j = int(pool[t])
            if not _fits(costs[j], remaining):
                if not dead_phase:
                    n_alive -= 1
                    swap(t, n_alive)
                    m -= 1
                    swap(n_alive, m)
                    region = n_alive
                else:
                    m -= 1
                    swap(t, m)
                    region = m
                continue
            bound = last[j] / costs[j]
            if best_j >= 0 and (best_key > bound or (best_key == bound and best_j < j)):
                t += 1
                continue
            if stamp[j] != k:
                evaluate(j, k)
                evals += 1
            g = float(last[j])
            if g <= 0.0 and not dead_phase:
                n_alive -= 1
                swap(t, n_alive)
                region = n_alive
                continue
            key = g / costs[j]
            if best_j < 0 or key > best_key or (key == best_key and j < best_j):
                best_j, best_key = j, key
            if memory_evals > 0 and g > 0.0 and not in_heap[j]:
                heapq.heappush(heap, (-key, j))
                in_heap[j] = True
            t += 1
        if best_j < 0:
            if dead_phase:
                break
            continue
        j = best_j
        f.update(j)
        selected[j] = True
        remaining -= costs[j]
        ranking.append(j)
        gains.append(float(last[j]))
        p = int(pos[j])
        if p < n_alive:
            n_alive -= 1
            swap(p, n_alive)
            p = n_alive
        m -= 1
        swap(p, m)
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
    memory_evals: int = STOCHASTIC_MEMORY_EVALS,
) -> Picks:
    """Greedily add up to ``max_picks`` candidates (and, with ``costs``, up to ``cost_budget``).

    ``initial_subset`` is applied first and never picked again; gains are conditioned on it.
    ``memory_evals`` (stochastic only): how many lazy re-evaluations of the candidates
    evaluated so far each pick may spend (see :func:`curator.selection._jit.stochastic_greedy`);
    0 turns the memory off and each pick is the best of its sample alone. Either way the
    sample is the same size and uniform.
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
                st, selected, costs_, budget, max_picks, sample_size, seed, int(memory_evals)
            )
        picks = Picks(r, g, int(ev))
    else:
        picks = _NUMPY[optimizer](
            f,
            selected,
            costs_,
            budget,
            max_picks,
            sample_size=sample_size,
            seed=seed,
            memory_evals=int(memory_evals),
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
