"""Stochastic greedy: exact gains, the alive pool, the lazy memory and its quality against lazy.

The quality tests use a small version of bench/bench_selection.py's kernel (kNN similarities
of uniform points, symmetrised, unit diagonal; query and private sets of N/100 points), where
FLCG's gains are heavy-tailed: the plain sample-only stochastic greedy lands 3-4% below lazy
greedy on it (issue 4), the version with memory within 2%.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from curator.selection import _jit, build_function, select
from curator.selection.optimizers import STOCHASTIC_MEMORY_EVALS, maximize

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUNCTIONS = ["facility_location", "flmi", "flvmi", "flcg", "graph_cut"]


def _knn(points, refs, k):
    dist, idx = cKDTree(refs).query(points, k=k)
    sigma = float(np.median(dist[:, -1]))
    values = np.exp(-((dist / sigma) ** 2)).ravel()
    indptr = np.arange(0, len(points) * k + 1, k)
    return sp.csr_matrix((values, idx.ravel(), indptr), shape=(len(points), len(refs)))


def _bench_like(seed, n=2000, k=16):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    s = _knn(x, x, k)
    s = s.maximum(s.T).tocsr()
    s.setdiag(1.0)
    q = _knn(x, x[rng.choice(n, n // 100, replace=False)], 8)
    p = _knn(x, x[rng.choice(n, n // 100, replace=False)], 8)
    return s, q, p


def _kwargs(function, q, p):
    if function in ("flmi", "flvmi"):
        return {"query_kernel": q}
    if function == "flcg":
        return {"private_kernel": p}
    return {}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stochastic_is_within_two_percent_of_lazy(seed):
    s, q, p = _bench_like(seed)
    budget = s.shape[0] // 10
    for function in FUNCTIONS:
        kw = _kwargs(function, q, p)
        lazy = select(s, budget, function, "lazy", **kw)
        stoch = select(s, budget, function, "stochastic", seed=seed, **kw)
        assert stoch.objective >= 0.98 * lazy.objective, function
        assert len(set(stoch.ranking.tolist())) == budget
        assert stoch.gains.sum() == pytest.approx(stoch.objective, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_closes_the_flcg_gap(seed):
    # the sample alone (memory off) is the 3-4% gap; memory brings it within 2%
    s, _, p = _bench_like(seed)
    budget = s.shape[0] // 10
    lazy = select(s, budget, "flcg", "lazy", private_kernel=p).objective
    values = {}
    for memory in (0, STOCHASTIC_MEMORY_EVALS):
        f = build_function("flcg", s, private_kernel=p)
        picks = maximize(f, budget, optimizer="stochastic", seed=seed, memory_evals=memory)
        values[memory] = f.evaluate_jit(picks.ranking)
        assert float(picks.gains.sum()) == pytest.approx(values[memory], rel=1e-9)
    assert values[0] < 0.98 * lazy
    assert values[STOCHASTIC_MEMORY_EVALS] >= 0.98 * lazy


def _gains_from_scratch(f, ranking, initial=()):
    chosen = list(initial)
    out = []
    for j in ranking:
        before = f.evaluate(np.array(chosen, dtype=np.int64))
        chosen.append(int(j))
        out.append(f.evaluate(np.array(chosen, dtype=np.int64)) - before)
    return np.array(out)


@st.composite
def sparse_problems(draw):
    """Larger than test_submodular_properties' (n up to 40) and sparse, with many candidates
    whose gain is or becomes zero (FLCG with nu up to 3, saturating FL), negative gains (graph
    cut with lam 0.9), costs and initial subsets."""
    function = draw(st.sampled_from(FUNCTIONS))
    n = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.05, 0.15, 0.4]))
    kernel = sp.random(n, n, density=density, random_state=rng, format="csr")
    kernel.data = np.round(kernel.data * 4) / 4  # ties
    kernel.eliminate_zeros()
    kw: dict = {}
    if function in ("flmi", "flvmi"):
        kw["query_kernel"] = sp.random(n, 3, density=0.5, random_state=rng, format="csr")
    elif function == "flcg":
        kw["private_kernel"] = sp.random(n, 3, density=0.5, random_state=rng, format="csr")
        kw["nu"] = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0]))
    elif function == "graph_cut":
        kernel = ((kernel + kernel.T) / 2).tocsr()
        kw["lam"] = draw(st.sampled_from([0.25, 0.5, 0.9]))
    init = draw(st.lists(st.integers(0, n - 1), max_size=n // 3, unique=True))
    costs = None
    if draw(st.booleans()):
        costs = rng.integers(1, 5, size=n).astype(np.float64)
    epsilon = draw(st.sampled_from([0.5, 0.1, 0.01]))
    return function, kernel, kw, init, costs, epsilon, seed


@SETTINGS
@given(sparse_problems(), st.sampled_from([0, 1, 8, 10**6]))
def test_stochastic_gains_are_exact_and_backends_agree(problem, memory):
    function, kernel, kw, init, costs, epsilon, seed = problem
    n = kernel.shape[1]
    budget = n - len(init) if costs is None else float(costs.sum()) / 3
    runs = {}
    for backend in ("numba", "numpy"):
        f = build_function(function, kernel, **kw)
        picks = maximize(
            f,
            int(budget) if costs is None else n - len(init),
            optimizer="stochastic",
            costs=costs,
            cost_budget=None if costs is None else budget,
            initial_subset=np.array(init, dtype=np.int64) if init else None,
            seed=seed,
            epsilon=epsilon,
            backend=backend,
            memory_evals=memory,
        )
        runs[backend] = picks
    fast, ref = runs["numba"], runs["numpy"]
    np.testing.assert_array_equal(fast.ranking, ref.ranking)
    np.testing.assert_allclose(fast.gains, ref.gains, rtol=1e-12, atol=1e-12)
    assert fast.n_evaluations == ref.n_evaluations
    r = fast.ranking
    assert len(set(r.tolist())) == r.size and not set(init) & set(r.tolist())
    if costs is None:
        assert r.size == budget  # a count budget is always filled, dead candidates included
    else:
        assert costs[r].sum() <= budget + 1e-9
    if not fast.singleton:
        f = build_function(function, kernel, **kw)
        np.testing.assert_allclose(fast.gains, _gains_from_scratch(f, r, init), atol=1e-9)


@SETTINGS
@given(sparse_problems())
def test_no_dead_pick_while_a_positive_gain_remains(problem):
    # the alive pool: a candidate is drawn from the dead (gain <= 0) ones only when every
    # candidate left is dead, so a pick with gain <= 0 means no positive gain was left
    function, kernel, kw, init, _, epsilon, seed = problem
    n = kernel.shape[1]
    f = build_function(function, kernel, **kw)
    init_arr = np.array(init, dtype=np.int64) if init else None
    picks = maximize(
        f,
        n - len(init),
        optimizer="stochastic",
        initial_subset=init_arr,
        seed=seed,
        epsilon=epsilon,
    )
    g = build_function(function, kernel, **kw)
    g.initialize(init_arr)
    chosen = np.zeros(n, dtype=bool)
    chosen[init] = True
    for j, gain in zip(picks.ranking, picks.gains, strict=True):
        if gain <= 0.0:
            left = np.flatnonzero(~chosen)
            assert g.gains(left).max() <= 0.0
        g.update(int(j))
        chosen[j] = True


@pytest.mark.parametrize("function", ["facility_location", "flcg"])
def test_evaluations_stay_within_the_sample_budget(function):
    # at most one evaluation per draw (k * s) and memory_evals per pick from the memory, plus
    # one per candidate found dead; in practice lazy evaluation leaves far fewer than k * s
    s, _, p = _bench_like(0)
    n = s.shape[0]
    budget = n // 10
    sample = _jit.stochastic_sample_size(n, budget, 0.01)
    kw = {"private_kernel": p} if function == "flcg" else {}
    for memory in (0, 1, STOCHASTIC_MEMORY_EVALS, 64):
        f = build_function(function, s, **kw)
        picks = maximize(f, budget, optimizer="stochastic", memory_evals=memory)
        assert picks.n_evaluations <= budget * (sample + memory) + n
        assert picks.n_evaluations < budget * sample


def test_select_passes_memory_evals_through():
    s, _, p = _bench_like(0, n=1000)  # 10 private points: enough for their 8 neighbours
    for memory in (0, 3):
        f = build_function("flcg", s, private_kernel=p)
        direct = maximize(f, 60, optimizer="stochastic", seed=1, memory_evals=memory)
        via = select(s, 60, "flcg", "stochastic", private_kernel=p, seed=1, memory_evals=memory)
        assert via.ranking.tolist() == direct.ranking.tolist()
        assert via.n_evaluations == direct.n_evaluations
