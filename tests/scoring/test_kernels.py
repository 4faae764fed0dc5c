"""Kernels: utility scaling, diagonal, id mapping, CSR layout, the embedding baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curator.scoring.kernels import dense, embedding_kernel, neighbour_kernel, utility_kernel
from curator.scoring.neighbours import pool_neighbours


def test_utility_kernel_values_diagonal_and_ids():
    k = utility_kernel(
        ["b", "b", "a", "a", "c", "c"],
        ["a", "c", "b", "c", "a", "b"],
        [0.2, -0.1, 0.4, float("nan"), 0.1, 0.3],
        valid=[True, True, True, False, True, False],
    )
    assert k.row_ids == ("a", "b", "c") and k.col_ids == ("a", "b", "c")
    assert k.scale == pytest.approx(0.4)
    want = np.array([
        [1.0, 1.0, 0.0],   # a: covered by b with the largest utility; (a, c) invalid
        [0.5, 1.0, 0.0],   # b: a helps 0.2 / 0.4; c hurts -> no coverage
        [0.25, 0.0, 1.0],  # c: a helps 0.1 / 0.4; (c, b) invalid
    ], dtype=np.float32)
    np.testing.assert_allclose(dense(k), want, atol=1e-7)
    assert k.value("b", "a") == pytest.approx(0.5)
    assert k.matrix.indices.dtype == np.int32 and k.matrix.indptr.dtype == np.int32
    assert k.matrix.dtype == np.float32
    assert k.matrix.nnz == 6  # zeros are not stored


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
    k = utility_kernel(["a", "b"], ["b", "a"], [-0.3, -0.1])
    np.testing.assert_allclose(dense(k), np.eye(2))


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
