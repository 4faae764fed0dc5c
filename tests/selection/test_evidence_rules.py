"""Where a sparse utility kernel needs evidence, and harm: hand-computed tiny cases."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from curator.selection.evidence_rules import (
    column_mean_utility,
    evidence_order,
    first_zero_gain,
    harmful_columns,
    propose_pairs,
    rows_by_need,
    without_columns,
)


def test_first_zero_gain():
    assert first_zero_gain([3.0, 1.0, 0.5]) == 3
    assert first_zero_gain([3.0, 0.0, 0.0]) == 1
    assert first_zero_gain([1e-13]) == 0
    assert first_zero_gain([]) == 0


def test_rows_by_need_orders_by_coverage_and_respects_floor_and_ceiling():
    # rows: 0 covered 0.9 by col 0; 1 covered 0.2; 2 nothing; 3 covered 1.0 (full)
    k = sp.csr_matrix(np.array([[0.9, 0.0, 0.3],
                                [0.2, 0.0, 0.0],
                                [0.0, 0.5, 0.0],
                                [1.0, 0.0, 0.0]]))
    assert rows_by_need(k, [0]).tolist() == [2, 1, 0]          # row 3 is full
    assert sorted(rows_by_need(k, []).tolist()) == [0, 1, 2, 3]
    # FLCG: row 1's previous data covers 0.5 > its 0.2 -> it needs 0 - ... ordered first
    # among (coverage - floor) = max(0.2, 0.5) - 0.5 = 0; row 2: 0; row 0: 0.9 - 0
    floor = np.array([0.0, 0.5, 0.0, 0.0])
    got = rows_by_need(k, [0], floor=floor)
    assert set(got[:2].tolist()) == {1, 2} and got[2] == 0
    # a row whose previous data covers it fully gains nothing
    assert 1 not in rows_by_need(k, [0], floor=np.array([0, 1.0, 0, 0])).tolist()
    # FLMI: rows no query cares about (ceiling 0) gain nothing; row 0 is at its ceiling 0.9
    ceiling = np.array([0.9, 0.0, 0.4, 0.5])
    assert rows_by_need(k, [0], ceiling=ceiling).tolist() == [2]


def test_propose_pairs_takes_the_most_similar_unscored_allowed_columns():
    rows_e = np.array([[1.0, 0.0], [0.0, 1.0]])
    cols_e = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    # row 0: cos order 0, 1, 2, 3; (0, 0) scored already, col 1 not allowed
    got = propose_pairs(rows_e, cols_e, [0, 1], [0, 2, 3], {(0, 0)}, per_row=2)
    assert got == [(0, 2), (0, 3), (1, 3), (1, 2)]
    # the same sample is never its own example
    assert propose_pairs(rows_e, cols_e, [1], [3, 2], set(), 1, same_ids=[(1, 3)]) == [(1, 2)]
    assert propose_pairs(rows_e, cols_e, [0], [], set(), 2) == []
    assert propose_pairs(rows_e, cols_e, [0], [0, 1], set(), 0) == []


def test_propose_pairs_adds_a_model_signal_to_the_similarity():
    rows_e = np.array([[1.0, 0.0]])
    cols_e = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])   # cosines 1.0, 0.8, 0.0
    assert propose_pairs(rows_e, cols_e, [0], [0, 1, 2], set(), 2) == [(0, 0), (0, 1)]
    # the prior doubts column 0 (bonus 0.1) and trusts column 2 (0.9): 1.1, 0.8+0.5, 0.9
    got = propose_pairs(rows_e, cols_e, [0], [0, 1, 2], set(), 2,
                        col_bonus=np.array([0.1, 0.5, 0.9]))
    assert got == [(0, 1), (0, 0)]
    got = propose_pairs(rows_e, cols_e, [0], [0, 1, 2], set(), 3,
                        col_bonus=np.array([0.0, 0.0, 1.05]))
    assert got == [(0, 2), (0, 0), (0, 1)]


def test_column_mean_utility_and_harm():
    mean, count = column_mean_utility([0, 0, 1, 2, 2, 2], [0.4, -0.2, -0.5, -0.1, -0.1, 0.5],
                                      n_cols=4, scale=2.0)
    np.testing.assert_allclose(mean[:3], [0.05, -0.25, 0.05])  # (0.4-0.2)/2/2, -0.5/2, 0.3/3/2
    assert np.isnan(mean[3]) and count.tolist() == [2, 1, 3, 0]
    # column 1 has one pair only: not enough evidence for min_pairs=2
    assert harmful_columns(mean, count).tolist() == []
    assert harmful_columns(mean, count, min_pairs=1).tolist() == [1]
    assert harmful_columns(mean, count, min_pairs=1, threshold=0.3).tolist() == []


def test_evidence_order_tiers():
    mean = np.array([0.2, np.nan, -0.1, 0.5, -0.3, np.nan, 0.0])
    order = evidence_order([0, 1, 2, 3, 4, 5, 6], mean, harmful=[4], seed=0).tolist()
    # positive by mean, then unscored (seeded order), then zero/negative by mean, harmful last
    assert order[:2] == [3, 0]
    assert sorted(order[2:4]) == [1, 5]
    assert order[4:] == [6, 2, 4]
    assert evidence_order([], mean, []).tolist() == []


def test_without_columns_on_both_axes():
    k = sp.csr_matrix(np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    out = without_columns(k, [1])
    assert out.toarray().tolist() == [[1, 0, 3], [4, 0, 6]] and out.nnz == 4
    assert without_columns(k, [0], axis=0).toarray().tolist() == [[0, 0, 0], [4, 5, 6]]
    dense = np.ones((2, 2), dtype=np.float32)
    assert without_columns(dense, [0]).tolist() == [[0, 1], [0, 1]]
    assert without_columns(k, []) is k and without_columns(None, [1]) is None
