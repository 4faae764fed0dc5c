"""Kernels: utility scaling, diagonal, id mapping, CSR layout, the embedding baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curator.scoring.kernels import dense, embedding_kernel, neighbour_kernel, utility_kernel
from curator.scoring.neighbours import pool_neighbours

UTILS = dict(target_ids=["b", "b", "a", "a", "c", "c"],
              example_ids=["a", "c", "b", "c", "a", "b"],
              utilities=[0.2, -0.1, 0.4, float("nan"), 0.1, 0.3],
              valid=[True, True, True, False, True, False])


def test_utility_kernel_values_diagonal_and_ids():
    k = utility_kernel(**UTILS)
    assert k.row_ids == ("a", "b", "c") and k.col_ids == ("a", "b", "c")
    assert k.scale == pytest.approx(0.4)
    # Self-coverage "best" (the default): each row covers itself as well as its best helper.
    want = np.array([
        [1.0, 1.0, 0.0],    # a: covered by b with the largest utility; (a, c) invalid
        [0.5, 0.5, 0.0],    # b: a helps 0.2 / 0.4; c hurts -> no coverage
        [0.25, 0.0, 0.25],  # c: a helps 0.1 / 0.4; (c, b) invalid
    ], dtype=np.float32)
    np.testing.assert_allclose(dense(k), want, atol=1e-7)
    assert k.value("b", "a") == pytest.approx(0.5)
    assert k.matrix.indices.dtype == np.int32 and k.matrix.indptr.dtype == np.int32
    assert k.matrix.dtype == np.float32
    assert k.matrix.nnz == 6  # zeros are not stored


def test_utility_kernel_unit_self_coverage():
    k = utility_kernel(**UTILS, self_coverage="one")
    np.testing.assert_allclose(dense(k), [[1.0, 1.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.0, 1.0]],
                               atol=1e-7)
    with pytest.raises(ValueError, match="self_coverage"):
        utility_kernel(**UTILS, self_coverage="two")


def test_best_self_coverage_stops_facility_location_from_favouring_unhelped_rows():
    """The failure it fixes, by hand: u is helped by nobody and helps nobody (a noisy row);
    a and b help each other. With a unit diagonal every pick is worth about 1, so the
    unhelped row ties with the useful ones; with "best" it is worth nothing."""
    from curator.selection import select

    k_one = utility_kernel(["a", "b"], ["b", "a"], [0.4, 0.2], row_ids=["a", "b", "u"],
                           col_ids=["a", "b", "u"], self_coverage="one")
    k_best = utility_kernel(["a", "b"], ["b", "a"], [0.4, 0.2], row_ids=["a", "b", "u"],
                            col_ids=["a", "b", "u"])
    # S[a, b] = 1 (b helps a by the largest utility), S[b, a] = 0.5.
    # Unit diagonal: f({a}) = 1 + 0.5, f({b}) = 1 + 1, f({u}) = 1, so b comes first (gain 2)
    # and then u (gain 1: its own row) beats a (gain 0: row a is already covered by b).
    one = select(k_one.matrix, 2, function="facility_location", optimizer="naive")
    assert list(one.ranking) == [1, 2]
    np.testing.assert_allclose(one.gains, [2.0, 1.0])
    # "best": S[a, a] = 1, S[b, b] = 0.5, S[u, u] = 0: a and b are worth 1.5 each, and after
    # either, nothing is left to gain; u is worth nothing at any point.
    best = select(k_best.matrix, 2, function="facility_location", optimizer="naive")
    assert best.ranking[0] in (0, 1)
    np.testing.assert_allclose(best.gains, [1.5, 0.0])


def test_utility_kernel_explicit_axes_and_fixed_scale():
    k = utility_kernel(["q1", "q2"], ["p1", "p2"], [0.5, 2.0], row_ids=["q2", "q1"],
                       col_ids=["p1", "p2", "p3"], scale=1.0)
    assert k.shape == (2, 3)
    assert k.row_of("q1") == 1 and k.col_of("p3") == 2
    np.testing.assert_allclose(dense(k), [[0, 1.0, 0], [0.5, 0, 0]])  # 2.0 clipped to 1
    # Targets x pool: no id on both axes, so no diagonal.
    assert dense(k).sum() == pytest.approx(1.5)


def test_utility_kernel_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        utility_kernel(["a"], ["b", "c"], [0.1])
    with pytest.raises(KeyError, match="not in row_ids"):
        utility_kernel(["a"], ["b"], [0.1], row_ids=["x"])
    with pytest.raises(ValueError, match="duplicate"):
        utility_kernel(["a", "a"], ["b", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        utility_kernel([], [], [])


def test_all_negative_utilities_leave_only_the_diagonal():
    k = utility_kernel(["a", "b"], ["b", "a"], [-0.3, -0.1], self_coverage="one")
    np.testing.assert_allclose(dense(k), np.eye(2))
    # Nothing helps anything: with "best" nothing covers anything, itself included.
    k = utility_kernel(["a", "b"], ["b", "a"], [-0.3, -0.1])
    assert k.matrix.nnz == 0


def test_embedding_kernel_pool_and_queries():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"s{i}" for i in range(20)]
    k = embedding_kernel(x, ids, 3)
    s = dense(k)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert ((s > 0).sum(axis=1) == 4).all()  # 3 neighbours + self
    nb = pool_neighbours(x, 3)
    j = nb.indices[7, 0]
    assert s[7, j] == pytest.approx((float(x[7] @ x[j]) + 1) / 2, abs=1e-6)

    q = [f"q{i}" for i in range(4)]
    kq = embedding_kernel(x[:4] * 2, q, 5, col_emb=x, col_ids=ids, scaling="clip")
    assert kq.row_ids == tuple(q) and kq.col_ids == tuple(ids)
    sq = dense(kq)
    cos = x[:4] @ x.T
    for r in range(4):
        for c in np.flatnonzero(sq[r]):
            assert sq[r, c] == pytest.approx(max(cos[r, c], 0.0), abs=1e-6)
    assert sq[0, 0] == pytest.approx(1.0, abs=1e-6)  # q0 is s0 (scaled), cosine 1


def test_neighbour_kernel_skips_missing_and_checks():
    from curator.scoring.neighbours import Neighbours

    nb = Neighbours(np.array([[1, -1]]), np.array([[0.5, math.nan]], np.float32), "hnsw")
    k = neighbour_kernel(nb, ["a"], ["x", "y"], scaling="clip")
    np.testing.assert_allclose(dense(k), [[0.0, 0.5]])
    with pytest.raises(ValueError, match="unknown scaling"):
        neighbour_kernel(nb, ["a"], ["x", "y"], scaling="minmax")
    with pytest.raises(ValueError, match="row ids"):
        neighbour_kernel(nb, ["a", "b"], ["x", "y"])
