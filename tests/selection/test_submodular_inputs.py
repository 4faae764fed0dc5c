"""Budgets and bad inputs: every mistake fails early with a message that names it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from curator.selection import canonical_function, parse_budget, parse_cost_budget, select

S = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])


@pytest.mark.parametrize(
    "spec,n,expected",
    [
        ("30%", 10, 3),
        (0.3, 10, 3),
        ("0.3", 10, 3),
        ("100", 1000, 100),
        (100, 1000, 100),
        (np.int64(7), 10, 7),
        (1.0, 10, 10),
        ("100%", 10, 10),
        (0.01, 10, 1),  # a fraction never rounds to an empty selection
        ("12.5%", 8, 1),
        (10, 10, 10),
        (5.0, 10, 5),  # a whole float above one is a count
    ],
)
def test_parse_budget(spec, n, expected):
    assert parse_budget(spec, n) == expected


@pytest.mark.parametrize(
    "spec,n,message",
    [
        # the messages are curator.budget.read_budget's, the same as a recipe's
        (0, 10, "budget must be above 0"),
        ("0", 10, "budget must be above 0"),
        (0.0, 10, "budget must be above 0"),
        ("0%", 10, "budget must be above 0"),
        (-5, 10, "budget must be above 0"),
        (-0.3, 10, "budget must be above 0"),
        ("-30%", 10, "budget must be a count"),
        ("150%", 10, "budget above 100%"),
        (11, 10, "larger than the pool of 10"),
        ("11", 10, "larger than the pool of 10"),
        (2.5, 10, "neither a whole count nor a fraction"),
        ("abc", 10, "budget must be a count"),
        ("x%", 10, "budget must be a count"),
        ("1e3", 10, "budget must be a count"),
        (float("nan"), 10, "not a finite number"),
        (float("inf"), 10, "not a finite number"),
        (True, 10, "got True"),
        (None, 10, "got None"),
        (5, 0, "empty pool"),
    ],
)
def test_parse_budget_rejects(spec, n, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(spec, n)


def test_parse_cost_budget():
    assert parse_cost_budget(250, 1000.0) == 250.0
    assert parse_cost_budget(0.5, 1000.0) == 0.5  # a cost, not a fraction
    assert parse_cost_budget("25%", 1000.0) == 250.0
    for bad in (0, -1, "0%", "120%", "lots", float("nan")):
        with pytest.raises(ValueError):
            parse_cost_budget(bad, 1000.0)


def test_function_aliases():
    assert canonical_function("FL") == "facility_location"
    assert canonical_function("fl2mi") == "flvmi"
    assert canonical_function("facility-location-conditional-gain") == "flcg"
    assert canonical_function("gc") == "graph_cut"
    with pytest.raises(
        ValueError, match="unknown function 'logdet'; choose one of facility_location"
    ):
        canonical_function("logdet")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(function="flmi"), "flmi needs query_kernel"),
        (dict(function="flvmi"), "flvmi needs query_kernel"),
        (dict(function="flcg"), "flcg needs private_kernel"),
        (dict(function="flmi", query_kernel=np.zeros((3, 0))), "query set Q is empty"),
        (dict(function="flvmi", query_kernel=np.zeros((3, 0))), "query set Q is empty"),
        (dict(function="flcg", private_kernel=np.zeros((3, 0))), "private set P is empty"),
        (
            dict(function="flmi", query_kernel=np.ones((4, 2))),
            r"query_kernel must be \(n_cover, n_query\)",
        ),
        (
            dict(function="flvmi", query_kernel=np.ones((4, 2))),
            r"query_kernel must be \(n_candidates, n_query\)",
        ),
        (
            dict(function="flcg", private_kernel=np.ones((2, 2))),
            r"private_kernel must be \(n_cover, n_private\)",
        ),
        (dict(query_kernel=np.ones((3, 2))), "query_kernel is only used by flmi and flvmi"),
        (dict(private_kernel=np.ones((3, 2))), "private_kernel is only used by flcg"),
        (
            dict(function="flmi", query_kernel=np.full((3, 2), np.nan)),
            "query_kernel has non-finite",
        ),
        (
            dict(function="flcg", private_kernel=-np.ones((3, 2))),
            "private_kernel has negative values",
        ),
        (dict(optimizer="fastest"), "unknown optimizer 'fastest'"),
        (
            dict(function="flmi", query_kernel=np.ones((3, 1)), eta=-1.0),
            "eta must be a finite number >= 0",
        ),
        (dict(function="flcg", private_kernel=np.ones((3, 1)), nu=np.inf), "nu must be"),
        (dict(initial_subset=[0, 3]), r"initial_subset has indices outside \[0, 3\)"),
        (dict(initial_subset=[1, 1]), "initial_subset has duplicate indices"),
        (dict(initial_subset=[0, 1, 2]), "larger than the 0 candidates not in initial_subset"),
        (dict(costs=[1.0, 2.0]), r"costs must have one value per candidate, shape \(3,\)"),
        (dict(costs=[1.0, 0.0, 2.0]), "costs must be finite and > 0"),
        (dict(epsilon=0.0), "epsilon must be in"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select(S, 1, **kwargs)


def test_bad_kernels():
    with pytest.raises(ValueError, match="kernel has non-finite values"):
        select(np.array([[1.0, np.inf], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="kernel has non-finite values"):
        select(sp.csr_matrix(np.array([[1.0, np.nan], [0.0, 1.0]])), 1)
    with pytest.raises(ValueError, match="kernel has negative values"):
        select(np.array([[1.0, -0.5], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="must be 2-D"):
        select(np.ones(3), 1)
    with pytest.raises(ValueError, match="numpy array or a scipy sparse matrix"):
        select([[1.0, 0.0], [0.0, 1.0]], 1)
    with pytest.raises(ValueError, match="needs at least one row"):
        select(np.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match="graph_cut needs a square kernel"):
        select(np.ones((2, 3)), 1, "graph_cut")
    with pytest.raises(ValueError, match="facility_location needs a kernel"):
        select(None, 1)
    with pytest.raises(ValueError, match="larger than the pool of 3"):
        select(S, 4)


def test_int64_and_int32_sparse_indices_are_both_accepted():
    a = sp.csr_matrix(S)
    b = sp.csr_matrix(S)
    b.indices = b.indices.astype(np.int64)
    b.indptr = b.indptr.astype(np.int64)
    assert (
        select(a, 2).ranking.tolist()
        == select(b, 2).ranking.tolist()
        == select(S, 2).ranking.tolist()
    )


def test_stochastic_is_seeded():
    rng = np.random.default_rng(0)
    K = rng.random((200, 200))
    a = select(K, 20, optimizer="stochastic", seed=5)
    b = select(K, 20, optimizer="stochastic", seed=5)
    c = select(K, 20, optimizer="stochastic", seed=6)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    assert a.ranking.tolist() != c.ranking.tolist()
    lazy = select(K, 20)
    assert a.objective >= 0.95 * lazy.objective
