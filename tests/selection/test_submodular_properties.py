"""Hypothesis properties of the greedy optimisers over every function.

Kernels are drawn from a coarse grid of values (multiples of 1/4) so exact ties are common:
that is where naive and lazy greedy, or sparse and dense input, would part ways if the
tie-breaking (lower index first) were not the same everywhere.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curator.selection import build_function, select

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _grid(draw, shape):
    cells = draw(
        st.lists(st.integers(0, 4), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])
    )
    return np.array(cells, dtype=np.float64).reshape(shape) / 4.0


@st.composite
def problems(draw, square: bool = False):
    """(function, kernel kwargs for select, n_candidates, budget)."""
    function = draw(st.sampled_from(["facility_location", "flmi", "flvmi", "flcg", "graph_cut"]))
    n_cand = draw(st.integers(1, 9))
    n_cover = n_cand if (square or function == "graph_cut") else draw(st.integers(1, 9))
    kernel = _grid(draw, (n_cover, n_cand))
    kwargs: dict = {"kernel": kernel}
    if function == "flmi":
        kwargs["query_kernel"] = _grid(draw, (n_cover, draw(st.integers(1, 4))))
        kwargs["eta"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    elif function == "flvmi":
        kwargs["query_kernel"] = _grid(draw, (n_cand, draw(st.integers(1, 4))))
        kwargs["eta"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    elif function == "flcg":
        kwargs["private_kernel"] = _grid(draw, (n_cover, draw(st.integers(1, 4))))
        kwargs["nu"] = draw(st.sampled_from([0.5, 1.0]))
    elif function == "graph_cut":
        kernel = (kernel + kernel.T) / 2
        kwargs["kernel"] = kernel
        kwargs["lam"] = draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    budget = draw(st.integers(1, n_cand))
    return function, kwargs, n_cand, budget


def _run(function, kwargs, budget, **extra):
    kw = dict(kwargs)
    kernel = kw.pop("kernel")
    return select(kernel, budget, function, **kw, **extra)


@SETTINGS
@given(problems())
def test_naive_and_lazy_agree_exactly(problem):
    function, kwargs, _, budget = problem
    naive = _run(function, kwargs, budget, optimizer="naive")
    lazy = _run(function, kwargs, budget, optimizer="lazy")
    np.testing.assert_array_equal(naive.ranking, lazy.ranking)
    np.testing.assert_array_equal(naive.gains, lazy.gains)
    assert naive.objective == lazy.objective


@SETTINGS
@given(problems(), st.sampled_from(["naive", "lazy", "stochastic"]))
def test_ranking_gains_and_objective_are_consistent(problem, optimizer):
    function, kwargs, n_cand, budget = problem
    r = _run(function, kwargs, budget, optimizer=optimizer)
    assert len(r.ranking) == budget  # a count budget is always filled
    assert len(set(r.ranking.tolist())) == budget
    assert r.ranking.min() >= 0 and r.ranking.max() < n_cand
    assert r.gains.sum() == pytest.approx(r.objective, rel=1e-9, abs=1e-9)
    if optimizer != "stochastic":
        # greedy on a submodular function: each pick's gain is at most the previous one's
        assert np.all(np.diff(r.gains) <= 1e-12)


@SETTINGS
@given(problems(), st.sampled_from(["naive", "lazy", "stochastic"]))
def test_sparse_and_dense_inputs_give_the_same_selection(problem, optimizer):
    function, kwargs, _, budget = problem
    dense = _run(function, kwargs, budget, optimizer=optimizer, seed=3)
    sparse_kwargs = {
        k: sp.csr_matrix(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()
    }
    sparse = _run(function, sparse_kwargs, budget, optimizer=optimizer, seed=3)
    np.testing.assert_array_equal(dense.ranking, sparse.ranking)
    np.testing.assert_array_equal(dense.gains, sparse.gains)


@SETTINGS
@given(problems(), st.sampled_from(["naive", "lazy", "stochastic"]), st.integers(0, 2**31 - 1))
def test_numba_and_numpy_backends_agree(problem, optimizer, seed):
    function, kwargs, _, budget = problem
    fast = _run(function, kwargs, budget, optimizer=optimizer, seed=seed)
    ref = _run(function, kwargs, budget, optimizer=optimizer, seed=seed, backend="numpy")
    np.testing.assert_array_equal(fast.ranking, ref.ranking)
    np.testing.assert_allclose(fast.gains, ref.gains, rtol=1e-12, atol=1e-12)
    assert fast.objective == pytest.approx(ref.objective, rel=1e-12, abs=1e-12)


@SETTINGS
@given(problems())
def test_stochastic_with_full_samples_is_naive_greedy(problem):
    # epsilon so small that every sample is the whole pool: the pick rule is then naive's
    function, kwargs, _, budget = problem
    naive = _run(function, kwargs, budget, optimizer="naive")
    full = _run(function, kwargs, budget, optimizer="stochastic", epsilon=1e-300)
    np.testing.assert_array_equal(naive.ranking, full.ranking)


@SETTINGS
@given(problems())
def test_greedy_is_within_one_minus_one_over_e_of_the_optimum(problem):
    function, kwargs, n_cand, budget = problem
    if function == "graph_cut" and kwargs["lam"] > 0.5:
        return  # non-monotone: the bound does not apply
    f = build_function(function, **kwargs)
    best = max(f.evaluate(np.array(c)) for c in itertools.combinations(range(n_cand), budget))
    r = _run(function, kwargs, budget, optimizer="lazy")
    assert r.objective >= (1 - 1 / math.e) * best - 1e-9
    assert r.objective <= best + 1e-9


@SETTINGS
@given(problems(), st.data())
def test_initial_subset_and_gains_add_up(problem, data):
    function, kwargs, n_cand, _ = problem
    if n_cand < 2:
        return
    init = data.draw(
        st.lists(st.integers(0, n_cand - 1), min_size=1, max_size=n_cand - 1, unique=True)
    )
    budget = data.draw(st.integers(1, n_cand - len(init)))
    naive = _run(function, kwargs, budget, optimizer="naive", initial_subset=init)
    lazy = _run(function, kwargs, budget, optimizer="lazy", initial_subset=init)
    np.testing.assert_array_equal(naive.ranking, lazy.ranking)
    assert not set(init) & set(naive.ranking.tolist())
    assert naive.initial_objective + naive.gains.sum() == pytest.approx(naive.objective, abs=1e-9)


@SETTINGS
@given(problems(), st.data())
def test_cost_budget_is_respected_and_beats_the_best_singleton(problem, data):
    function, kwargs, n_cand, _ = problem
    if function == "graph_cut" and kwargs["lam"] > 0.5:
        return
    costs = np.array(
        data.draw(st.lists(st.integers(1, 5), min_size=n_cand, max_size=n_cand)), float
    )
    budget = float(data.draw(st.integers(1, int(costs.sum()))))
    f = build_function(function, **kwargs)
    singles = [f.evaluate(np.array([j])) for j in range(n_cand) if costs[j] <= budget]
    for optimizer in ("naive", "lazy"):
        r = _run(function, kwargs, budget, optimizer=optimizer, costs=costs)
        assert costs[r.ranking].sum() <= budget + 1e-9
        assert r.cost == pytest.approx(costs[r.ranking].sum())
        assert r.objective >= max(singles, default=0.0) - 1e-9
        assert r.gains.sum() == pytest.approx(r.objective, abs=1e-9)
