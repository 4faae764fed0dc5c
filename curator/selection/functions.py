"""Submodular set functions over similarity kernels, split the apricot way.

Each function knows three operations: ``initialize`` (reset, then apply an initial subset),
``gains`` (marginal gains of some candidates given the current selection) and ``update``
(add one pick). Optimisers call only those, so any optimiser runs any function. The methods
here are the plain numpy reference; the same state is handed to the compiled loops in
:mod:`curator.selection._jit` through :meth:`SetFunction.jit_state`.

Orientation: a kernel ``S`` has shape ``(n_cover, n_candidates)``; ``S[i, a]`` is how well
candidate ``a`` represents (covers) item ``i``. In DELIFT's usual case both axes are the same
pool and ``S`` is square; its diagonal is 1 for embedding kernels and, by default, each row's
best off-diagonal value for utility kernels (see :mod:`curator.scoring.kernels`).

FL, FLMI and FLCG are all facility location over a per-row transformed kernel, which is why one
coverage core serves them:

- FLMI: ``min(max_a S[i, a], c_i) = max_a min(S[i, a], c_i)`` with ``c_i = eta * max_q Q[i, q]``;
- FLCG: ``max(max_a S[i, a] - p_i, 0) = max_a max(S[i, a] - p_i, 0)`` with
  ``p_i = nu * max_p P[i, p]`` (and both sides are 0 for the empty set);
- FLVMI: facility location over the query rows plus a modular term ``eta * max_q Q[a, q]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from curator.selection import _jit

_EMPTY_I = np.zeros(1, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float64)


def to_csc(kernel: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csc_matrix:
    """A canonical CSC copy: float64 data, int64 indices, sorted, no duplicates, no zeros.

    Dense and sparse inputs with the same values end up with identical arrays (zeros never
    change a facility-location or graph-cut value), so they give identical selections.
    """
    if sp.issparse(kernel):
        csc = sp.csc_matrix(kernel, dtype=np.float64, copy=True)
    else:
        csc = sp.csc_matrix(np.asarray(kernel, dtype=np.float64))
    csc.sum_duplicates()
    csc.eliminate_zeros()
    csc.sort_indices()
    csc.indptr = csc.indptr.astype(np.int64, copy=False)
    csc.indices = csc.indices.astype(np.int64, copy=False)
    return csc


def row_max(kernel: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """max over columns of each row, shape (n_rows,); missing sparse entries count as 0."""
    if sp.issparse(kernel):
        return np.asarray(sp.csr_matrix(kernel).max(axis=1).toarray(), dtype=np.float64).ravel()
    return np.asarray(kernel, dtype=np.float64).max(axis=1)


class SetFunction:
    """Base: holds the state tuple layout shared with the compiled optimisers."""

    name = "set_function"
    monotone = True

    kind: int
    n_rows: int  # length of the per-row state ``cur``
    n_candidates: int
    cov: sp.csc_matrix  # (n_rows, n_candidates)
    modular: np.ndarray  # (n_candidates,)
    cur: np.ndarray  # (n_rows,)

    def __init__(self) -> None:
        self.cur = np.zeros(self.n_rows, dtype=np.float64)

    # -- the three operations -----------------------------------------------------------------

    def initialize(self, initial_subset: np.ndarray | None = None) -> None:
        """Reset to the empty selection, then add ``initial_subset`` (if any)."""
        self.cur[:] = 0.0
        if initial_subset is not None:
            for a in np.asarray(initial_subset, dtype=np.int64):
                self.update(int(a))

    def gains(self, candidates: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, pick: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------

    def evaluate(self, subset: np.ndarray) -> float:  # pragma: no cover - abstract
        """f(subset), computed from scratch (independent of the current state)."""
        raise NotImplementedError

    def evaluate_jit(self, subset: np.ndarray) -> float:
        """:meth:`evaluate` by the compiled loop (fast at a million candidates)."""
        subset = np.ascontiguousarray(subset, dtype=np.int64)
        return float(_jit.evaluate(self.jit_state(), subset, self.n_rows))

    def jit_state(self) -> tuple:
        """The flat state tuple the compiled loops read (see :mod:`curator.selection._jit`)."""
        rows = getattr(self, "_csr", None)
        rptr, rind, rdat = (
            (rows.indptr, rows.indices, rows.data)
            if rows is not None
            else (_EMPTY_I, _EMPTY_I, _EMPTY_F)
        )
        return (
            np.int64(self.kind),
            self.cov.indptr,
            self.cov.indices,
            self.cov.data,
            self.cur,
            self.modular,
            rptr,
            rind,
            rdat,
            np.float64(getattr(self, "lam", 0.0)),
        )


class _Coverage(SetFunction):
    """``f(A) = sum_i max_{a in A} C[i, a] + sum_{a in A} m[a]`` with C >= 0 (CSC)."""

    kind = _jit.KIND_COVERAGE

    def __init__(self, cov: sp.csc_matrix, modular: np.ndarray | None = None) -> None:
        self.cov = cov
        self.n_rows, self.n_candidates = cov.shape
        self.modular = (
            np.zeros(self.n_candidates)
            if modular is None
            else np.ascontiguousarray(modular, dtype=np.float64)
        )
        self._entry_col: np.ndarray | None = None  # built on first numpy ``gains`` call
        super().__init__()

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if self._entry_col is None:
            # (nnz,) column of every stored entry, for vectorised per-candidate sums
            self._entry_col = np.repeat(np.arange(self.n_candidates), np.diff(self.cov.indptr))
        # (nnz,) improvement of each stored entry over the current best of its row
        improve = np.maximum(self.cov.data - self.cur[self.cov.indices], 0.0)
        per_candidate = np.bincount(self._entry_col, weights=improve, minlength=self.n_candidates)
        return self.modular[candidates] + per_candidate[candidates]

    def update(self, pick: int) -> None:
        lo, hi = self.cov.indptr[pick], self.cov.indptr[pick + 1]
        rows = self.cov.indices[lo:hi]
        self.cur[rows] = np.maximum(self.cur[rows], self.cov.data[lo:hi])

    def evaluate(self, subset: np.ndarray) -> float:
        subset = np.asarray(subset, dtype=np.int64)
        if subset.size == 0:
            return 0.0
        best = np.asarray(self.cov[:, subset].max(axis=1).toarray()).ravel()
        return float(best.sum() + self.modular[subset].sum())


class FacilityLocation(_Coverage):
    """``f(A) = sum_i max_{a in A} S[i, a]``; S: (n_cover, n_candidates). Representativeness:
    every item to cover should have a close selected candidate."""

    name = "facility_location"

    def __init__(self, kernel: sp.csc_matrix) -> None:
        super().__init__(kernel)


class FacilityLocationMutualInformation(_Coverage):
    """submodlib's FLMI: ``f(A) = sum_i min(max_{a in A} S[i, a], eta * max_{q in Q} Q[i, q])``.

    S: (n_cover, n_candidates); Q: (n_cover, n_query). Once an item is covered as well as the
    query set covers it, it stops paying: the function saturates on query-relevant items.
    """

    name = "flmi"

    def __init__(self, kernel: sp.csc_matrix, query_kernel, eta: float = 1.0) -> None:
        cap = eta * row_max(query_kernel)  # (n_cover,)
        cov = kernel.copy()
        cov.data = np.minimum(cov.data, cap[cov.indices])
        self.eta = eta
        super().__init__(to_csc(cov))


class FacilityLocationVariantMutualInformation(_Coverage):
    """The DELIFT paper's FLMI = submodlib's FLVMI (FL2MI):
    ``f(A) = sum_{q in Q} max_{a in A} Q[a, q] + eta * sum_{a in A} max_{q in Q} Q[a, q]``.

    Q: (n_candidates, n_query). Only query-candidate similarities enter, and the modular
    second term never saturates, so it keeps rewarding query-relevant picks.
    """

    name = "flvmi"

    def __init__(self, query_kernel, eta: float = 1.0) -> None:
        cov = to_csc(query_kernel.T if sp.issparse(query_kernel) else np.asarray(query_kernel).T)
        self.eta = eta
        super().__init__(cov, eta * row_max(query_kernel))  # cov: (n_query, n_candidates)


class FacilityLocationConditionalGain(_Coverage):
    """submodlib's FLCG: ``f(A | P) = sum_i max(max_{a in A} S[i, a] - nu * max_{p in P} P[i, p], 0)``.

    S: (n_cover, n_candidates); P: (n_cover, n_private). Items the previously used data P
    already covers pay little or nothing, so the selection goes where P did not.
    """

    name = "flcg"

    def __init__(self, kernel: sp.csc_matrix, private_kernel, nu: float = 1.0) -> None:
        offset = nu * row_max(private_kernel)  # (n_cover,)
        cov = kernel.copy()
        cov.data = np.maximum(cov.data - offset[cov.indices], 0.0)
        self.nu = nu
        super().__init__(to_csc(cov))


class GraphCut(SetFunction):
    """submodlib's GraphCut: ``f(A) = sum_{i in V, a in A} S[i, a] - lam * sum_{a, b in A} S[a, b]``.

    S: square (n, n). Gain of j: ``sum_i S[i, j] - lam * (sum_{a in A} (S[a, j] + S[j, a]) + S[j, j])``.
    Monotone for ``lam <= 0.5``; above that it rewards diversity and gains can turn negative.
    """

    name = "graph_cut"
    kind = _jit.KIND_GRAPH_CUT

    def __init__(self, kernel: sp.csc_matrix, lam: float = 0.5) -> None:
        self.cov = kernel
        self.n_rows, self.n_candidates = kernel.shape
        self.lam = float(lam)
        self.monotone = self.lam <= 0.5
        csr = kernel.tocsr()
        csr.sort_indices()
        csr.indptr = csr.indptr.astype(np.int64, copy=False)
        csr.indices = csr.indices.astype(np.int64, copy=False)
        self._csr = csr
        colsum = np.asarray(kernel.sum(axis=0)).ravel()
        self.modular = np.ascontiguousarray(colsum - self.lam * kernel.diagonal(), dtype=np.float64)
        super().__init__()

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        return self.modular[candidates] - self.lam * self.cur[candidates]

    def update(self, pick: int) -> None:
        # cur[l] accumulates S[l, a] + S[a, l] over picks a
        lo, hi = self.cov.indptr[pick], self.cov.indptr[pick + 1]
        np.add.at(self.cur, self.cov.indices[lo:hi], self.cov.data[lo:hi])
        lo, hi = self._csr.indptr[pick], self._csr.indptr[pick + 1]
        np.add.at(self.cur, self._csr.indices[lo:hi], self._csr.data[lo:hi])

    def evaluate(self, subset: np.ndarray) -> float:
        subset = np.asarray(subset, dtype=np.int64)
        if subset.size == 0:
            return 0.0
        cols = self.cov[:, subset]
        return float(cols.sum() - self.lam * cols[subset, :].sum())
