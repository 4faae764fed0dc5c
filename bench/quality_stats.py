"""Paired comparison of a method with random subsets: mean difference and a bootstrap CI.

Design (``bench/quality.py``): every method is fine-tuned with training seeds 0..S-1 and
random subset s is drawn and trained with seed s, so run s of a method and run s of random
share the seed, the steps and the data order; both are scored on the same N evaluation
rows. The paired differences form an (S, N) matrix ``d[s, i] = better(method, random)``
(for a loss: random's loss minus the method's, so positive always means the method did
better). The estimate is the mean of ``d``.

Its 95% interval comes from a two-way bootstrap: each replicate draws S seeds and C
evaluation clusters with replacement, independently, and takes the mean of ``d`` over
the drawn seeds x the rows of the drawn clusters. A cluster is a group of rows that are
not independent (one item asked under several templates); by default every row is its
own cluster. The interval is the 2.5th-97.5th percentile of the replicates. With S = 3
seeds the seed draw is coarse, which is why the row draw is there: it carries the
uncertainty of which rows were asked, the seed draw that of training noise and (for
random) of which subset was drawn.

Pure numpy; ``tests/test_bench_quality_stats.py`` checks it against a plain loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDiff:
    mean: float          # mean paired difference (positive: the method is better)
    low: float           # bootstrap percentile interval
    high: float
    n_seeds: int
    n_rows: int
    n_clusters: int
    n_boot: int

    @property
    def above_zero(self) -> bool:
        """The whole interval is above zero: better than random at this level."""
        return self.low > 0

    @property
    def below_zero(self) -> bool:
        return self.high < 0


def paired_differences(method: np.ndarray, baseline: np.ndarray,
                       lower_is_better: bool) -> np.ndarray:
    """(S, N) differences oriented so that positive means ``method`` is better.

    ``method`` and ``baseline``: (S, N) per-seed, per-row values (seed s of one paired
    with seed s of the other). NaN stays NaN (``bootstrap_diff`` drops such rows)."""
    m = np.asarray(method, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if m.ndim != 2 or m.shape != b.shape:
        raise ValueError(f"need two (seeds, rows) arrays of one shape, got {m.shape} and "
                         f"{b.shape}")
    return b - m if lower_is_better else m - b


def _finite_columns(d: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(d).all(axis=0)
    return d[:, keep], clusters[keep]


def bootstrap_diff(d: np.ndarray, clusters: np.ndarray | None = None, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> PairedDiff:
    """Mean of the (S, N) paired differences ``d`` and its two-way bootstrap interval
    (seeds x row clusters, see the module docstring). ``clusters``: (N,) labels."""
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"need a (seeds, rows) array, got shape {d.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError("level must be in (0, 1) and n_boot >= 1")
    labels = np.arange(d.shape[1]) if clusters is None else np.asarray(clusters)
    if labels.shape != (d.shape[1],):
        raise ValueError(f"clusters: {labels.shape[0]} labels for {d.shape[1]} rows")
    d, labels = _finite_columns(d, labels)
    if d.shape[1] == 0:
        raise ValueError("no evaluation row is finite in every run")
    _, cluster = np.unique(labels, return_inverse=True)
    n_seeds, n_clusters = d.shape[0], int(cluster.max()) + 1
    # sums[s, c]: the differences of seed s over cluster c's rows; size[c]: its rows
    sums = np.zeros((n_seeds, n_clusters))
    np.add.at(sums.T, cluster, d.T)
    size = np.bincount(cluster, minlength=n_clusters).astype(float)
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cluster_draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    # how often each seed / cluster was drawn in each replicate
    ws = np.stack([np.bincount(r, minlength=n_seeds) for r in seed_draws]).astype(float)
    wc = np.stack([np.bincount(r, minlength=n_clusters) for r in cluster_draws]).astype(float)
    # replicate mean: sum over drawn (seed, row) cells / number of drawn cells
    total = np.einsum("bs,sc,bc->b", ws, sums, wc)
    cells = n_seeds * (wc @ size)
    reps = total / cells
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return PairedDiff(float(d.mean()), float(low), float(high), n_seeds, d.shape[1],
                      n_clusters, n_boot)


def compare(method: np.ndarray, baseline: np.ndarray, lower_is_better: bool,
            clusters: np.ndarray | None = None, n_boot: int = 2000, level: float = 0.95,
            seed: int = 0) -> PairedDiff:
    """``bootstrap_diff`` of ``paired_differences``: one call per method and metric."""
    return bootstrap_diff(paired_differences(method, baseline, lower_is_better), clusters,
                          n_boot, level, seed)
