"""Cosine k-nearest neighbours with FAISS, and the candidate pairs built from them.

Three graphs feed the pairwise utility: pool x pool (self excluded), targets x pool (a
target set against the pool) and new x previous (a new version against the data already
used). All are the same search: queries against an index of candidates.

Exact search (``IndexFlatIP``) up to ``exact_threshold`` candidates, HNSW above it (exact
search over N x N grows quadratically; HNSW is about log N per query and keeps its graph
at 2 x M ints per vector, so 100k x 384 fits well under 4 GB). The result records which.
The threshold is high on purpose: the graph only chooses which pairs get scored, and
scoring them costs far more (100k samples x 16 pairs is about a day of CPU forward passes)
than exact search does (under a minute at 100k x 384 on two cores), while HNSW's recall
depends on the data: 0.26 on random vectors at 100k (bench/results/neighbours.md).

k larger than the candidate set is clipped to its size with a warning, not rejected: on
small sets (a demo, a first version) "k = 10" should just mean "all of them", the dense case.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT_THRESHOLD = 200_000  # candidates; bench/bench_neighbours.py times both paths


@dataclass(frozen=True)
class Neighbours:
    indices: np.ndarray  # (n, k) int64 rows of the candidate set; -1 where HNSW found fewer
    similarities: np.ndarray  # (n, k) float32 cosine, best first; NaN where indices is -1
    method: str  # "exact" or "hnsw(M=..,efConstruction=..,efSearch=..)"

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {x.shape}")
    x = np.array(x, dtype=np.float32, order="C")  # a copy: normalised in place below
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, 1e-12)
    return x


def knn(queries: np.ndarray, candidates: np.ndarray, k: int, *, exclude_self: bool = False,
        exact_threshold: int = EXACT_THRESHOLD, hnsw_m: int = 32, ef_construction: int = 64,
        ef_search: int = 64, query_batch: int = 8192) -> Neighbours:
    """The k most cosine-similar candidates of each query.

    ``exclude_self``: queries are the candidates themselves (same rows, same order) and a
    row is not its own neighbour. Vectors need not be normalised (they are, on a copy).
    """
    import faiss

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    q = _unit_rows(queries, "queries")
    c = _unit_rows(candidates, "candidates") if not exclude_self else q
    if exclude_self and len(np.asarray(candidates)) != len(q):
        raise ValueError("exclude_self needs queries and candidates to be the same rows")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"dimension mismatch: queries {q.shape[1]}, candidates {c.shape[1]}")
    available = len(c) - (1 if exclude_self else 0)
    if available < 1:
        raise ValueError("no candidates left to be neighbours (a set of one, self excluded)")
    if k > available:
        warnings.warn(f"k={k} is more than the {available} candidates; using k={available}",
                      stacklevel=2)
        k = available
    search_k = k + 1 if exclude_self else k

    d = c.shape[1]
    if len(c) <= exact_threshold:
        index = faiss.IndexFlatIP(d)
        method = "exact"
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = max(ef_search, search_k)
        method = (f"hnsw(M={hnsw_m},efConstruction={ef_construction},"
                  f"efSearch={index.hnsw.efSearch})")
    index.add(c)

    indices = np.empty((len(q), k), dtype=np.int64)
    sims = np.empty((len(q), k), dtype=np.float32)
    for s in range(0, len(q), query_batch):
        sim, idx = index.search(q[s:s + query_batch], search_k)  # (b, search_k) each
        if exclude_self:
            idx, sim = _drop_self(idx, sim, np.arange(s, s + len(idx)))
        indices[s:s + len(idx)] = idx
        sims[s:s + len(idx)] = sim
    sims[indices < 0] = np.nan
    return Neighbours(indices, sims, method)


def _drop_self(idx: np.ndarray, sim: np.ndarray,
               rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from its k + 1 results (or the last one, when an
    approximate search or exact ties left it out)."""
    drop = idx == rows[:, None]
    no_self = ~drop.any(axis=1)
    drop[no_self, -1] = True
    keep = ~drop
    n, k1 = idx.shape
    return idx[keep].reshape(n, k1 - 1), sim[keep].reshape(n, k1 - 1)


def pool_neighbours(pool: np.ndarray, k: int, **kwargs) -> Neighbours:
    """pool x pool, a sample never its own neighbour."""
    return knn(pool, pool, k, exclude_self=True, **kwargs)


def neighbour_pairs(query_ids: Sequence[str], candidate_ids: Sequence[str],
                    neighbours: Neighbours) -> list[tuple[str, str]]:
    """(target_id, example_id) pairs from a graph: the query is the target, its neighbour
    the in-context example (how much that candidate helps that query)."""
    if len(query_ids) != len(neighbours.indices):
        raise ValueError("query_ids and the neighbour rows differ in length")
    return [(query_ids[r], candidate_ids[c]) for r, row in enumerate(neighbours.indices.tolist())
            for c in row if c >= 0]


def dense_pairs(ids: Sequence[str], example_ids: Sequence[str] | None = None, *,
                include_self: bool = False) -> list[tuple[str, str]]:
    """All (target, example) pairs: ids x ids (self excluded unless asked) or ids x
    example_ids. The ``--dense`` reference for small sets; N x M forward passes."""
    if not ids:
        raise ValueError("no ids to pair")
    examples = ids if example_ids is None else example_ids
    if not examples:
        raise ValueError("no example ids to pair")
    return [(t, e) for t in ids for e in examples if include_self or t != e]
