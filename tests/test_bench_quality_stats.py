"""bench/quality_stats.py: paired differences and their two-way bootstrap interval."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from quality_stats import bootstrap_diff, compare, paired_differences  # noqa: E402


def test_paired_differences_by_hand():
    method = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 2.0]])
    random = np.array([[2.0, 2.0, 4.0], [1.0, 3.0, 3.0]])
    # a loss: random - method, positive where the method is lower
    np.testing.assert_array_equal(paired_differences(method, random, True),
                                  [[1.0, 0.0, 1.0], [-0.5, 0.5, 1.0]])
    # exact match (higher is better): method - random
    np.testing.assert_array_equal(paired_differences(method, random, False),
                                  [[-1.0, 0.0, -1.0], [0.5, -0.5, -1.0]])
    with pytest.raises(ValueError, match="one shape"):
        paired_differences(method, random[:, :2], True)


def test_mean_by_hand_and_constant_differences():
    d = np.array([[1.0, 0.0, 1.0], [-0.5, 0.5, 1.0]])
    r = bootstrap_diff(d, n_boot=500)
    assert r.mean == pytest.approx(3.0 / 6)          # (1 + 0 + 1 - 0.5 + 0.5 + 1) / 6
    assert (r.n_seeds, r.n_rows, r.n_clusters) == (2, 3, 3)
    assert r.low <= r.mean <= r.high
    # every cell 0.25: each replicate's mean is 0.25, so the interval is the point
    c = bootstrap_diff(np.full((3, 7), 0.25), n_boot=200)
    assert (c.mean, c.low, c.high) == pytest.approx((0.25, 0.25, 0.25))
    assert c.above_zero and not c.below_zero


def _plain_bootstrap(d, clusters, n_boot, level, seed):
    """The straightforward version: materialise each replicate's rows and seeds."""
    _, cl = np.unique(clusters, return_inverse=True)
    n_seeds, n_clusters = d.shape[0], cl.max() + 1
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cluster_draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    reps = []
    for b in range(n_boot):
        cols = np.concatenate([np.flatnonzero(cl == c) for c in cluster_draws[b]])
        reps.append(d[seed_draws[b]][:, cols].mean())
    alpha = (1 - level) / 2
    return np.quantile(reps, [alpha, 1 - alpha])


@pytest.mark.parametrize("with_clusters", [False, True])
def test_interval_equals_a_plain_loop(with_clusters):
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 1.0, size=(3, 12))
    clusters = np.repeat(np.arange(4), 3) if with_clusters else np.arange(12)
    got = bootstrap_diff(d, clusters if with_clusters else None, n_boot=300, seed=7)
    want = _plain_bootstrap(d, clusters, 300, 0.95, 7)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    assert got.mean == pytest.approx(d.mean())
    assert got.n_clusters == (4 if with_clusters else 12)


def test_unequal_clusters_weight_rows_not_clusters():
    # cluster 0 has 3 rows of 1.0, cluster 1 one row of 0.0: the row mean is 0.75
    d = np.array([[1.0, 1.0, 1.0, 0.0]])
    r = bootstrap_diff(d, np.array([0, 0, 0, 1]), n_boot=400, seed=1)
    want = _plain_bootstrap(d, np.array([0, 0, 0, 1]), 400, 0.95, 1)
    assert r.mean == pytest.approx(0.75)
    assert (r.low, r.high) == pytest.approx(tuple(want))


def test_nan_rows_are_dropped():
    d = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    r = bootstrap_diff(d, n_boot=50)
    assert r.n_rows == 2 and r.mean == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no evaluation row"):
        bootstrap_diff(np.array([[np.nan]]))


def test_a_clear_difference_is_found_and_noise_is_not():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.5, size=(3, 200))          # random's per-row losses
    better = base - 0.2 + rng.normal(0, 0.05, size=(3, 200))
    same = base + rng.normal(0, 0.05, size=(3, 200))
    assert compare(better, base, lower_is_better=True).above_zero
    r = compare(same, base, lower_is_better=True)
    assert r.low < 0 < r.high
