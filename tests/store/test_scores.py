"""Score caches in the store: exact round trips, NaN for invalid pairs, and INSERT OR IGNORE
(a second save of a stored key neither duplicates nor overwrites it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curator.store.scores import (
    existing_pairs,
    load_embeddings,
    load_gradient_scores,
    load_losses,
    load_utilities,
    save_embeddings,
    save_gradient_scores,
    save_losses,
    save_utilities,
)


def count(store, table: str) -> int:
    return store.query(f"SELECT count(*) FROM {table}")[0][0]


# -- embeddings ------------------------------------------------------------------------------


def test_embeddings_round_trip_float32_exactly(store):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 7)).astype(np.float32)
    vectors[0, 0] = np.float32(1e-38)          # tiny and awkward values survive bit for bit
    vectors[1, 1] = np.float32(-3.4e38)
    ids = [f"s{i}" for i in range(5)]
    save_embeddings(store, "emb-a", ids, vectors)
    got = load_embeddings(store, "emb-a", ids)
    assert sorted(got) == ids
    for i, sid in enumerate(ids):
        assert got[sid].dtype == np.float32
        assert got[sid].shape == (7,)
        assert got[sid].tobytes() == vectors[i].tobytes()
    assert store.query("SELECT DISTINCT dim FROM embeddings") == [(7,)]


def test_embeddings_float64_input_is_stored_as_float32(store):
    vectors = np.array([[0.1, 0.2, 0.3]], dtype=np.float64)
    save_embeddings(store, "e", ["a"], vectors)
    np.testing.assert_array_equal(load_embeddings(store, "e", ["a"])["a"],
                                  vectors.astype(np.float32)[0])


def test_embeddings_are_keyed_by_embedder_and_filtered_by_ids(store):
    save_embeddings(store, "e1", ["a", "b"], np.ones((2, 3), dtype=np.float32))
    save_embeddings(store, "e2", ["a"], np.zeros((1, 3), dtype=np.float32))
    assert sorted(load_embeddings(store, "e1", ["a", "b", "zzz"])) == ["a", "b"]
    assert list(load_embeddings(store, "e1", ["b"])) == ["b"]
    np.testing.assert_array_equal(load_embeddings(store, "e2", ["a", "b"])["a"], np.zeros(3))
    assert load_embeddings(store, "e1", []) == {}
    assert load_embeddings(store, "nobody", ["a"]) == {}


def test_embeddings_second_save_neither_duplicates_nor_overwrites(store):
    save_embeddings(store, "e", ["a", "b"], np.ones((2, 2), dtype=np.float32))
    save_embeddings(store, "e", ["b", "c"], np.full((2, 2), 5.0, dtype=np.float32))
    got = load_embeddings(store, "e", ["a", "b", "c"])
    assert count(store, "embeddings") == 3
    np.testing.assert_array_equal(got["b"], [1.0, 1.0])    # first write wins
    np.testing.assert_array_equal(got["c"], [5.0, 5.0])


def test_embeddings_length_mismatch_raises(store):
    with pytest.raises(ValueError, match="differ in length"):
        save_embeddings(store, "e", ["a", "b"], np.ones((3, 2), dtype=np.float32))


# -- utilities -------------------------------------------------------------------------------


def save_some_utilities(store, model="m", config="c"):
    save_utilities(store, model, config,
                   target_ids=["t1", "t1", "t2", "t2"],
                   example_ids=["e1", "e2", "e1", "e3"],
                   utility=[0.25, -0.5, 0.75, 0.125],
                   d_target=[0.5, 0.5, 0.9, 0.9],
                   d_given=[0.25, 1.0, 0.15, float("nan")],
                   valid=[True, True, True, False],
                   reasons=[None, None, None, "example does not fit"])


def test_utilities_round_trip_with_nan_for_invalid(store):
    save_some_utilities(store)
    rows = load_utilities(store, "m", "c", ["t1", "t2"])
    assert len(rows) == 4
    # ordered by target, then example
    assert list(zip(rows.target_id, rows.example_id, strict=True)) == [
        ("t1", "e1"), ("t1", "e2"), ("t2", "e1"), ("t2", "e3")]
    np.testing.assert_array_equal(rows.utility[:3], [0.25, -0.5, 0.75])
    assert math.isnan(rows.utility[3])
    assert rows.valid.tolist() == [True, True, True, False]
    assert rows.utility.dtype == np.float64 and rows.valid.dtype == bool
    # the invalid pair keeps its reason and a NULL utility in the table itself
    raw = store.query("SELECT utility, d_target, d_given, valid, reason FROM utilities "
                      "WHERE target_id = 't2' AND example_id = 'e3'")
    assert raw[0][0] is None and raw[0][1] == 0.9 and raw[0][3] is False
    assert raw[0][4] == "example does not fit"
    assert store.query("SELECT d_given, reason FROM utilities WHERE target_id = 't1' AND "
                       "example_id = 'e2'") == [(1.0, None)]


def test_invalid_pair_with_a_value_is_stored_as_nan(store):
    save_utilities(store, "m", "c", ["t"], ["e"], [0.9], [0.5], [0.1], [False])
    rows = load_utilities(store, "m", "c", ["t"])
    assert math.isnan(rows.utility[0]) and not rows.valid[0]


def test_load_utilities_filters_targets_examples_model_and_config(store):
    save_some_utilities(store)
    save_utilities(store, "m", "other-config", ["t1"], ["e1"], [9.0], [0.0], [0.0], [True])
    save_utilities(store, "other-model", "c", ["t1"], ["e1"], [8.0], [0.0], [0.0], [True])
    rows = load_utilities(store, "m", "c", ["t1"])
    assert rows.example_id == ["e1", "e2"]
    np.testing.assert_array_equal(rows.utility, [0.25, -0.5])
    rows = load_utilities(store, "m", "c", ["t1", "t2"], example_ids=["e1"])
    assert list(zip(rows.target_id, rows.example_id, strict=True)) == [("t1", "e1"),
                                                                       ("t2", "e1")]
    np.testing.assert_array_equal(rows.utility, [0.25, 0.75])
    assert len(load_utilities(store, "m", "c", ["nobody"])) == 0
    assert load_utilities(store, "other-model", "c", ["t1"]).utility.tolist() == [8.0]


def test_existing_pairs_are_per_model_config_and_target(store):
    save_some_utilities(store)
    save_utilities(store, "m", "c2", ["t3"], ["e1"], [0.1], [0.2], [0.1], [True])
    assert existing_pairs(store, "m", "c", ["t1", "t2"]) == {
        ("t1", "e1"), ("t1", "e2"), ("t2", "e1"), ("t2", "e3")}   # invalid pairs count too
    assert existing_pairs(store, "m", "c", ["t2"]) == {("t2", "e1"), ("t2", "e3")}
    assert existing_pairs(store, "m", "c", ["t3"]) == set()
    assert existing_pairs(store, "m", "c2", ["t3"]) == {("t3", "e1")}
    assert existing_pairs(store, "m", "c", []) == set()


def test_second_save_of_a_pair_does_not_duplicate_or_overwrite(store):
    save_some_utilities(store)
    # the same pairs again with other values (a resumed run recomputing a chunk), one new pair
    save_utilities(store, "m", "c", ["t1", "t2", "t9"], ["e1", "e3", "e1"], [0.99, 0.5, 0.3],
                   [0.0, 0.0, 0.4], [0.0, 0.0, 0.1], [True, True, True])
    assert count(store, "utilities") == 5
    rows = load_utilities(store, "m", "c", ["t1", "t2", "t9"])
    got = dict(zip(zip(rows.target_id, rows.example_id, strict=True), rows.utility.tolist(),
                   strict=True))
    assert got[("t1", "e1")] == 0.25
    assert math.isnan(got[("t2", "e3")])          # still the first, invalid record
    assert got[("t9", "e1")] == pytest.approx(0.3)
    assert store.query("SELECT count(*) FROM (SELECT target_id, example_id FROM utilities "
                       "GROUP BY ALL HAVING count(*) > 1)")[0][0] == 0


# -- d(i) losses -----------------------------------------------------------------------------


def test_losses_round_trip_none_and_nan_are_invalid(store):
    save_losses(store, "m", "c", ["a", "b", "c"], [0.5, None, float("nan")], [3, 0, 2])
    assert load_losses(store, "m", "c", ["a", "b", "c", "d"]) == {"a": 0.5, "b": None,
                                                                 "c": None}
    assert store.query("SELECT sample_id, n_tokens, valid FROM losses ORDER BY sample_id") == [
        ("a", 3, True), ("b", 0, False), ("c", 2, False)]
    assert load_losses(store, "m", "other", ["a"]) == {}


def test_losses_second_save_is_ignored(store):
    save_losses(store, "m", "c", ["a"], [0.5], [3])
    save_losses(store, "m", "c", ["a", "b"], [0.9, 0.1], [4, 1])
    assert load_losses(store, "m", "c", ["a", "b"]) == {"a": 0.5, "b": 0.1}
    assert count(store, "losses") == 2


# -- gradient scores -------------------------------------------------------------------------


def test_gradient_scores_round_trip_per_layer(store):
    save_gradient_scores(store, "m", "c", ["a", "b"], np.array([1.5, -2.25]))
    save_gradient_scores(store, "m", "c", ["a", "b"], np.array([0.125, 3.0]),
                         layer="model.layers.0")
    assert load_gradient_scores(store, "m", "c", ["a", "b", "z"]) == {"a": 1.5, "b": -2.25}
    assert load_gradient_scores(store, "m", "c", ["a", "b"], layer="model.layers.0") == {
        "a": 0.125, "b": 3.0}
    assert load_gradient_scores(store, "m", "other", ["a"]) == {}
    assert count(store, "gradient_scores") == 4


def test_gradient_scores_are_replaced_on_a_second_save(store):
    # Unlike the pairwise caches, gradient scores use INSERT OR REPLACE: the latest wins.
    save_gradient_scores(store, "m", "c", ["a"], np.array([1.0]))
    save_gradient_scores(store, "m", "c", ["a"], np.array([2.0]))
    assert load_gradient_scores(store, "m", "c", ["a"]) == {"a": 2.0}
    assert count(store, "gradient_scores") == 1


def test_remember_model_names_a_fingerprint_once(store):
    """Scores are keyed by fingerprint; the name recorded first is what the app shows."""
    from curator.store.browse_selections import model_label
    from curator.store.scores import remember_model

    assert model_label(store, "abc123") == "fingerprint abc123 (name not recorded)"
    remember_model(store, "abc123", "SmolLM2-135M-Instruct")
    remember_model(store, "abc123", "another name")
    assert model_label(store, "abc123") == "SmolLM2-135M-Instruct"
    assert count(store, "models") == 1
