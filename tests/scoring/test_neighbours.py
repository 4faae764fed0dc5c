"""Cosine kNN: exact search against brute force, HNSW recall, the three graphs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from curator.scoring.neighbours import (
    dense_pairs,
    knn,
    neighbour_pairs,
    pool_neighbours,
)


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(q: np.ndarray, c: np.ndarray, k: int, exclude_self: bool = False):
    sim = q @ c.T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def test_exact_query_neighbours_match_brute_force():
    q, c = unit(40, 16, 0), unit(300, 16, 1)
    nb = knn(q, c, 7)
    idx, sim = brute(q, c, 7)
    assert nb.method == "exact"
    assert nb.indices.dtype == np.int64 and nb.similarities.dtype == np.float32
    assert nb.indices.shape == (40, 7)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.similarities, sim, atol=1e-5)


def test_pool_neighbours_exclude_self():
    x = unit(120, 8, 2)
    nb = pool_neighbours(x, 5)
    idx, sim = brute(x, x, 5, exclude_self=True)
    assert not (nb.indices == np.arange(120)[:, None]).any()
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.similarities, sim, atol=1e-5)


def test_unnormalised_input_gives_cosine():
    x = unit(50, 6, 3) * np.random.default_rng(4).uniform(0.1, 10, (50, 1)).astype(np.float32)
    nb = knn(x[:10], x[10:], 3)
    idx, sim = brute(unit(50, 6, 3)[:10], unit(50, 6, 3)[10:], 3)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.similarities, sim, atol=1e-5)


def test_duplicate_vectors_still_exclude_self():
    x = np.repeat(unit(10, 4, 5), 3, axis=0)  # every vector three times: ties with self
    nb = pool_neighbours(x, 2)
    assert not (nb.indices == np.arange(30)[:, None]).any()
    np.testing.assert_allclose(nb.similarities, 1.0, atol=1e-5)


def test_hnsw_path_recall():
    x = unit(3000, 32, 6)
    q = unit(200, 32, 7)
    nb = knn(q, x, 10, exact_threshold=1000)
    assert nb.method.startswith("hnsw")
    idx, _ = brute(q, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb.indices, idx, strict=True)])
    assert recall > 0.9
    own = pool_neighbours(x[:1500], 5, exact_threshold=100)
    assert own.method.startswith("hnsw")
    assert not (own.indices == np.arange(1500)[:, None]).any()


def test_k_larger_than_pool_is_clipped_with_warning():
    x = unit(6, 4, 8)
    with pytest.warns(UserWarning, match="using k=5"):
        nb = pool_neighbours(x, 10)
    assert nb.indices.shape == (6, 5)
    with pytest.warns(UserWarning, match="using k=6"):
        assert knn(x[:2], x, 50).k == 6


def test_bad_input():
    x = unit(5, 4, 9)
    with pytest.raises(ValueError, match="k must be"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="non-empty"):
        knn(np.zeros((0, 4), np.float32), x, 2)
    with pytest.raises(ValueError, match="non-empty"):
        knn(x, np.zeros((0, 4), np.float32), 2)
    with pytest.raises(ValueError, match="dimension"):
        knn(x, unit(5, 3, 1), 2)
    with pytest.raises(ValueError, match="no candidates"):
        pool_neighbours(x[:1], 1)


def test_pairs_from_graph_and_dense():
    x = unit(4, 3, 10)
    ids = ["a", "b", "c", "d"]
    nb = pool_neighbours(x, 2)
    pairs = neighbour_pairs(ids, ids, nb)
    assert len(pairs) == 8
    assert all(t != e for t, e in pairs)
    assert pairs[:2] == [("a", ids[nb.indices[0, 0]]), ("a", ids[nb.indices[0, 1]])]
    assert len(dense_pairs(ids)) == 12
    assert len(dense_pairs(ids, include_self=True)) == 16
    assert dense_pairs(["q"], ["a", "b"]) == [("q", "a"), ("q", "b")]
