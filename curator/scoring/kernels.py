"""Similarity kernels for the submodular functions, built from sparse scores.

A kernel is a scipy CSR matrix S (rows: items to be covered, columns: candidates, values in
[0, 1], int32 indices) with the sample ids of its rows and columns.

Self-coverage. An item that is both a row and a column covers itself. Embedding kernels use
S[i, i] = 1 (cosine of a vector with itself). For utility kernels that default is harmful:
with S[i, i] = 1 every pick earns a full point for covering itself, which outweighs the
scaled utilities it adds for others, and the items nothing helps -- wrong, truncated or
swapped responses, which no in-context example makes predictable -- look the most "novel"
to facility location and conditional gain (in the demo's continual stages a quarter of the
picks were such rows, twice their base rate). So utility kernels use ``self_coverage="best"``
by default: S[i, i] is the best utility any other scored example gives row i, the least
value that keeps "training on i teaches i at least as well as any helper" true. A row that
nothing helps then covers itself with 0 and is picked only for what it does for others.
``self_coverage="one"`` keeps the unit diagonal (the reference code's convention).

Utility scaling. The reference code min-max scales the dense N x N utility matrix over all
its entries, negatives included. On a sparse kNN kernel that would be wrong: unscored pairs
are implicit zeros, so a shift would give every *scored* harmful pair (negative utility) a
positive similarity while unscored pairs stay at 0. Here a utility <= 0 means "does not
help" (no coverage, not stored), and positive utilities are divided by one global scale, by
default the largest positive utility off the diagonal, so the order of pairs is the reference's
and the best helper reaches 1 like S[i, i]. Pass ``scale`` to fix it across kernels that
must be comparable (pool x pool and targets x pool of one stage).

Embedding kernels follow the reference's model-independent variant: cosine similarity of the
kNN pairs, scaled by "additive" (cos + 1) / 2 (the reference default; all kNN pairs keep a
value, ordered as cosine) or "clip" max(cos, 0) (dissimilar pairs give no coverage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from curator.scoring.neighbours import Neighbours, knn
from curator.vocabulary import SELF_COVERAGE

EMBEDDING_SCALINGS = ("additive", "clip")
_DENSE_LIMIT = 50_000_000  # entries; a dense N x M beyond this is a mistake, not a helper


@dataclass(frozen=True)
class Kernel:
    matrix: sp.csr_matrix  # (n_rows, n_cols) float32, int32 indices
    row_ids: tuple[str, ...]
    col_ids: tuple[str, ...]
    scale: float = 1.0  # what raw scores were divided by (utility kernels)
    _row_index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _col_index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._row_index.update((s, i) for i, s in enumerate(self.row_ids))
        self._col_index.update((s, i) for i, s in enumerate(self.col_ids))

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def row_of(self, sample_id: str) -> int:
        return self._row_index[sample_id]

    def col_of(self, sample_id: str) -> int:
        return self._col_index[sample_id]

    def value(self, row_id: str, col_id: str) -> float:
        return float(self.matrix[self.row_of(row_id), self.col_of(col_id)])


def _ids(given: Sequence[str] | None, seen: Sequence[str], what: str) -> tuple[str, ...]:
    if given is None:
        return tuple(sorted(set(seen)))
    out = tuple(given)
    if len(set(out)) != len(out):
        raise ValueError(f"{what} has duplicate ids")
    return out


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
         row_ids: Sequence[str], col_ids: Sequence[str], self_coverage: str = "one"
         ) -> sp.csr_matrix:
    """CSR with a diagonal for ids in both axes (1, or with ``self_coverage="best"`` the
    row's largest off-diagonal value); int32 indices for the selection engine."""
    col_pos = {s: j for j, s in enumerate(col_ids)}
    both = [(i, col_pos[s]) for i, s in enumerate(row_ids) if s in col_pos]
    if both:
        d_rows, d_cols = (np.array(x, dtype=np.int64) for x in zip(*both, strict=True))
        off_diag = np.array([col_ids[c] != row_ids[r]
                             for r, c in zip(rows.tolist(), cols.tolist(), strict=True)], dtype=bool)
        rows, cols, vals = rows[off_diag], cols[off_diag], vals[off_diag]
        if self_coverage == "best":
            best = np.zeros(shape[0], dtype=np.float32)
            np.maximum.at(best, rows, vals.astype(np.float32))
            d_vals = best[d_rows]
        else:
            d_vals = np.ones(len(d_rows), dtype=np.float32)
        rows = np.concatenate([rows, d_rows])
        cols = np.concatenate([cols, d_cols])
        vals = np.concatenate([vals.astype(np.float32), d_vals])
    m = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    m.eliminate_zeros()
    m.sort_indices()
    if m.nnz >= 2**31:
        raise ValueError("kernel has too many entries for int32 indices")
    m.indices = m.indices.astype(np.int32)
    m.indptr = m.indptr.astype(np.int32)
    return m


def utility_kernel(target_ids: Sequence[str], example_ids: Sequence[str],
                   utilities: Sequence[float] | np.ndarray, valid: Sequence[bool] | None = None,
                   *, row_ids: Sequence[str] | None = None, col_ids: Sequence[str] | None = None,
                   scale: float | None = None, self_coverage: str = "best") -> Kernel:
    """Kernel from sparse utilities UF(target, example): rows are targets (to be covered),
    columns examples (candidates). Invalid or NaN utilities are ignored; utilities <= 0
    give no coverage; the rest are divided by ``scale`` (default: the largest) and clipped
    to 1. Without ``row_ids``/``col_ids`` the axes are the sorted ids that occur. An id on
    both axes covers itself with ``self_coverage`` (module docstring): "best" (default) or
    "one"."""
    if self_coverage not in SELF_COVERAGE:
        raise ValueError(f"unknown self_coverage {self_coverage!r}; use one of "
                         f"{', '.join(SELF_COVERAGE)}")
    t = [str(x) for x in target_ids]
    e = [str(x) for x in example_ids]
    u = np.asarray(utilities, dtype=np.float64)
    if not (len(t) == len(e) == len(u)):
        raise ValueError("target_ids, example_ids and utilities differ in length")
    ok = ~np.isnan(u)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    rows_ids = _ids(row_ids, t, "row_ids")
    cols_ids = _ids(col_ids, e, "col_ids")
    if not rows_ids or not cols_ids:
        raise ValueError("a kernel needs at least one row and one column")
    r_pos = {s: i for i, s in enumerate(rows_ids)}
    c_pos = {s: j for j, s in enumerate(cols_ids)}
    unknown = {x for x in t if x not in r_pos} | {x for x in e if x not in c_pos}
    if unknown:
        raise KeyError(f"{len(unknown)} id(s) in the pairs are not in row_ids/col_ids: "
                       f"{', '.join(sorted(unknown)[:3])}")
    rows = np.array([r_pos[x] for x in t], dtype=np.int64)
    cols = np.array([c_pos[x] for x in e], dtype=np.int64)
    if len(set(zip(rows[ok].tolist(), cols[ok].tolist(), strict=True))) != int(ok.sum()):
        raise ValueError("duplicate (target, example) pairs among the valid utilities")
    keep = ok & (u > 0) & np.array([a != b for a, b in zip(t, e, strict=True)], dtype=bool)
    if scale is None:
        scale = float(u[keep].max()) if keep.any() else 1.0
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    vals = np.minimum(u[keep] / scale, 1.0).astype(np.float32)
    m = _csr(rows[keep], cols[keep], vals, (len(rows_ids), len(cols_ids)), rows_ids, cols_ids,
             self_coverage)
    return Kernel(m, rows_ids, cols_ids, scale)


def neighbour_kernel(neighbours: Neighbours, row_ids: Sequence[str], col_ids: Sequence[str],
                     scaling: str = "additive") -> Kernel:
    """Kernel from a cosine kNN graph (rows: queries, columns: candidates)."""
    if scaling not in EMBEDDING_SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; use one of {', '.join(EMBEDDING_SCALINGS)}")
    row_ids, col_ids = tuple(row_ids), tuple(col_ids)
    n, k = neighbours.indices.shape
    if n != len(row_ids):
        raise ValueError(f"{n} neighbour rows but {len(row_ids)} row ids")
    idx = neighbours.indices.reshape(-1)
    sim = neighbours.similarities.reshape(-1).astype(np.float64)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    ok = idx >= 0
    if ok.any() and idx[ok].max() >= len(col_ids):
        raise ValueError("neighbour indices run past col_ids")
    vals = (sim + 1.0) / 2.0 if scaling == "additive" else np.maximum(sim, 0.0)
    vals = np.clip(vals, 0.0, 1.0).astype(np.float32)
    m = _csr(rows[ok], idx[ok], vals[ok], (n, len(col_ids)), row_ids, col_ids)
    return Kernel(m, row_ids, col_ids)


def embedding_kernel(row_emb: np.ndarray, row_ids: Sequence[str], k: int,
                     col_emb: np.ndarray | None = None, col_ids: Sequence[str] | None = None,
                     scaling: str = "additive", **knn_kwargs) -> Kernel:
    """The model-independent baseline: cosine kNN kernel of embeddings. Without columns it is
    pool x pool (self excluded from the search, then S[i, i] = 1)."""
    if col_emb is None:
        nb = knn(row_emb, row_emb, k, exclude_self=True, **knn_kwargs)
        return neighbour_kernel(nb, row_ids, row_ids, scaling)
    if col_ids is None:
        raise ValueError("col_ids are needed with col_emb")
    nb = knn(row_emb, col_emb, k, **knn_kwargs)
    return neighbour_kernel(nb, row_ids, col_ids, scaling)


def dense(kernel: Kernel | sp.spmatrix) -> np.ndarray:
    """The kernel as a dense float32 array (small sets only)."""
    m = kernel.matrix if isinstance(kernel, Kernel) else kernel
    if m.shape[0] * m.shape[1] > _DENSE_LIMIT:
        raise ValueError(f"refusing to densify a {m.shape[0]} x {m.shape[1]} kernel")
    return np.asarray(m.toarray(), dtype=np.float32)
