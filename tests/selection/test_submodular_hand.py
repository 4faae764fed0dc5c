"""Tiny cases worked out by hand: every gain of every pick, for each function."""

from __future__ import annotations

import numpy as np
import pytest

from curator.selection import select

# (n_cover, n_candidates) = (3, 3); symmetric with unit diagonal, as DELIFT builds it.
S = np.array(
    [
        [1.0, 0.6, 0.0],
        [0.6, 1.0, 0.3],
        [0.0, 0.3, 1.0],
    ]
)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_facility_location_by_hand(optimizer, backend):
    # Column sums 1.6, 1.9, 1.3 -> pick 1 (1.9); rows now covered [0.6, 1, 0.3]:
    # gain(0) = 1 - 0.6 = 0.4, gain(2) = 1 - 0.3 = 0.7 -> pick 2 (0.7), then 0 (0.4).
    r = select(S, 3, "facility_location", optimizer, backend=backend)
    assert r.ranking.tolist() == [1, 2, 0]
    np.testing.assert_allclose(r.gains, [1.9, 0.7, 0.4], atol=1e-12)
    assert r.objective == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_flmi_by_hand(optimizer):
    # caps eta * max_q Q[i, q] = [0.5, 0.1, 0.7]; clipped S = [[.5 .5 0] [.1 .1 .1] [0 .3 .7]]
    # gains [0.6, 0.9, 0.8] -> 1; covered [.5 .1 .3]: gain(0) = 0, gain(2) = 0.4 -> 2; then 0 (0).
    Q = np.array([[0.5], [0.1], [0.7]])  # (n_cover, n_query)
    r = select(S, 3, "flmi", optimizer, query_kernel=Q, eta=1.0)
    assert r.ranking.tolist() == [1, 2, 0]
    np.testing.assert_allclose(r.gains, [0.9, 0.4, 0.0], atol=1e-12)
    assert r.objective == pytest.approx(1.3, abs=1e-12)  # sum_i min(1, cap_i)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_flvmi_by_hand(optimizer):
    # f(A) = sum_q max_{a in A} Q[a, q] + 0.5 * sum_{a in A} max_q Q[a, q]
    # gains: 0 -> .9 + .1 + .45 = 1.45; then 2 -> (.6 - .1) + .3 = 0.8; then 1 -> 0 + .25.
    Q = np.array([[0.9, 0.1], [0.4, 0.5], [0.0, 0.6]])  # (n_candidates, n_query)
    r = select(S, 3, "flvmi", optimizer, query_kernel=Q, eta=0.5)
    assert r.ranking.tolist() == [0, 2, 1]
    np.testing.assert_allclose(r.gains, [1.45, 0.8, 0.25], atol=1e-12)
    assert r.objective == pytest.approx(1.5 + 0.5 * 2.0, abs=1e-12)
    # the kernel only fixes n_candidates for flvmi; None works too
    r2 = select(None, 3, "flvmi", optimizer, query_kernel=Q, eta=0.5)
    assert r2.ranking.tolist() == [0, 2, 1]


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_flcg_by_hand(optimizer):
    # offsets nu * max_p P[i, p] = [0.4, 0.1, 0]; max(S - offset, 0) = [[.6 .2 0] [.5 .9 .2] [0 .3 1]]
    # gains [1.1, 1.4, 1.2] -> 1; covered [.2 .9 .3]: gain(0) = .4, gain(2) = .7 -> 2; then 0 (.4).
    P = np.array([[0.8], [0.2], [0.0]])  # (n_cover, n_private)
    r = select(S, 3, "flcg", optimizer, private_kernel=P, nu=0.5)
    assert r.ranking.tolist() == [1, 2, 0]
    np.testing.assert_allclose(r.gains, [1.4, 0.7, 0.4], atol=1e-12)
    assert r.objective == pytest.approx(2.5, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_graph_cut_by_hand(optimizer):
    # gain(j) = colsum[j] - lam * (sum_{a in A} S[a, j] + S[j, a] + S[j, j]), lam = 0.25
    # empty A: [1.35, 1.65, 1.05] -> 1; then 0: 1.35 - .25 * 1.2 = 1.05, 2: 1.05 - .25 * .6 = .9
    # -> 0; then 2: still 0.9 (S[0, 2] = 0). f(V) = 0.75 * sum(S) = 3.6.
    r = select(S, 3, "graph_cut", optimizer, lam=0.25)
    assert r.ranking.tolist() == [1, 0, 2]
    np.testing.assert_allclose(r.gains, [1.65, 1.05, 0.9], atol=1e-12)
    assert r.objective == pytest.approx(3.6, abs=1e-12)


def test_rectangular_kernel_rows_are_covered_items():
    # 2 items to cover, 3 candidates: candidate 2 covers both halfway, 0 and 1 one each fully.
    K = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])  # (n_cover=2, n_candidates=3)
    r = select(K, 2, "facility_location")
    assert r.ranking.tolist() == [0, 1]  # gains 1.0 (ties with 1 and 2, lowest index) then 1.0
    np.testing.assert_allclose(r.gains, [1.0, 1.0])
    r = select(K, 1, "facility_location")
    assert r.objective == pytest.approx(1.0)


def test_initial_subset_conditions_the_gains():
    # with 1 already chosen: gain(0) = 0.4, gain(2) = 0.7 (see the FL case above)
    r = select(S, 2, "facility_location", initial_subset=[1])
    assert r.ranking.tolist() == [2, 0]
    np.testing.assert_allclose(r.gains, [0.7, 0.4], atol=1e-12)
    assert r.initial_objective == pytest.approx(1.9)
    assert r.objective == pytest.approx(3.0)


def test_cost_budget_ratio_and_singleton_safeguard():
    # Ratio greedy takes the cheap item (gain 1.0 / cost 1) and then nothing else fits;
    # the single expensive item (gain 10 / cost 10) is worth more and fits alone.
    K = np.zeros((11, 2))
    K[0, 0] = 1.0
    K[1:, 1] = 1.0  # candidate 1 covers 10 rows
    r = select(K, 10.0, costs=np.array([1.0, 10.0]))
    assert r.singleton
    assert r.ranking.tolist() == [1]
    assert r.objective == pytest.approx(10.0)
    assert r.cost == pytest.approx(10.0)
    # with room for both, ratio greedy takes both (1.0 / 1 first, then 10 / 10: tie -> index 0)
    r = select(K, 11.0, costs=np.array([1.0, 10.0]))
    assert not r.singleton
    assert r.ranking.tolist() == [0, 1]
    np.testing.assert_allclose(r.gains, [1.0, 10.0])
