"""Store-aware scoring jobs: exactly the kNN candidate pairs, nothing twice, resumable runs,
and kernels read back from the store in the right orientation and units."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import curator.scoring.engine as engines
import curator.scoring.jobs as jobs
from curator.config import ScoringOptions
from curator.ingestion.ingest import ingest
from curator.scoring.embeddings import embedder_fingerprint
from curator.scoring.jobs import (
    EMBED_MAX_LENGTH,
    candidate_pairs,
    ensure_embeddings,
    score_utilities,
    utility_config,
    utility_kernel_from_store,
    utility_scale,
)
from curator.scoring.kernels import dense
from curator.scoring.neighbours import knn, neighbour_pairs
from curator.scoring.utility import score_pairs_reference
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.scores import load_embeddings, save_utilities
from tests.helpers import TINY_OPTIONS, write_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory, pair_rows) -> Path:
    """A store with dataset "d": v1 with 20 samples, v2 = v1 + 6 new ones (append); nothing
    scored. Ingested once; tests work on copies."""
    root = tmp_path_factory.mktemp("jobs-base")
    store = Store(root / "store", lock_timeout=10)
    for name, data, append in (("v1.jsonl", pair_rows(20), False),
                               ("v2.jsonl", pair_rows(6, start=20), True)):
        ingest(store, write_jsonl(root / name, data), "d", append=append)
    return store.path


@pytest.fixture
def store(base, tmp_path):
    shutil.copytree(base, tmp_path / "store")
    return Store(tmp_path / "store", lock_timeout=10)


@pytest.fixture
def pool(store):
    return load_samples(store, "d", 1), load_samples(store, "d", 2)


def stored_pairs(store, lm) -> dict[tuple[str, str], float]:
    chash = utility_config(lm, TINY_OPTIONS).config_hash()
    rows = store.query("SELECT target_id, example_id, utility FROM utilities WHERE model = ? "
                       "AND config = ?", [lm.fingerprint, chash])
    return {(t, e): (math.nan if u is None else u) for t, e, u in rows}


def expected_knn_pairs(store, lm, samples, k=TINY_OPTIONS.k) -> set[tuple[str, str]]:
    """The candidate pairs computed independently from the stored embeddings."""
    ids = [s.sample_id for s in samples]
    emb = load_embeddings(store, embedder_fingerprint(lm, EMBED_MAX_LENGTH), ids)
    assert len(emb) == len(ids)
    matrix = np.stack([emb[i] for i in ids])
    return set(neighbour_pairs(ids, ids, knn(matrix, matrix, k, exclude_self=True)))


# -- candidate pairs and the incremental job -----------------------------------------------


def test_scores_exactly_the_knn_pairs_then_nothing_new(store, lm, pool):
    v1, _ = pool
    first = score_utilities(store, lm, v1, v1, TINY_OPTIONS, dataset="d")
    want = expected_knn_pairs(store, lm, v1)
    assert len(want) == 20 * 3
    assert set(stored_pairs(store, lm)) == want
    assert (first.n_pairs, first.n_computed, first.n_reused) == (60, 60, 0)
    assert first.n_embedded == 20 and first.graph == "exact"
    assert first.n_invalid == 0
    assert "60 computed" in first.line()
    run = store.get_run(first.run_id)
    assert run["kind"] == "score-utility" and run["status"] == "done"
    assert (run["done"], run["total"]) == (60, 60)
    # d(i) is stored once per target
    assert store.query("SELECT count(*) FROM losses")[0][0] == 20

    again = score_utilities(store, lm, v1, v1, TINY_OPTIONS, dataset="d")
    assert (again.n_pairs, again.n_computed, again.n_reused, again.n_embedded) == (60, 0, 60, 0)
    assert again.line().startswith("nothing new to score: 60 pairs already in the store")
    assert again.run_id is None
    assert len(store.runs(kind="score-utility")) == 1
    assert store.query("SELECT count(*) FROM utilities")[0][0] == 60


def test_a_new_version_scores_only_the_pairs_not_stored(store, lm, pool):
    v1, v2 = pool
    score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    before = set(stored_pairs(store, lm))
    summary = score_utilities(store, lm, v2, v2, TINY_OPTIONS)
    want = expected_knn_pairs(store, lm, v2)
    new = want - before
    assert summary.n_pairs == len(want) == 26 * 3
    assert summary.n_computed == len(new)
    assert summary.n_reused == len(want & before)
    assert summary.n_embedded == 6                  # only the new samples
    # every new pair involves a new sample as its target or as a new neighbour of an old one
    new_ids = {s.sample_id for s in v2} - {s.sample_id for s in v1}
    assert len(new_ids) == 6
    assert all(t in new_ids or e in new_ids for t, e in new)
    assert set(stored_pairs(store, lm)) == before | want
    assert store.query("SELECT count(*) FROM utilities")[0][0] == len(before | want)


def test_hub_examples_by_hand():
    # e1 helps its two targets by 0.4 and 0.0 (mean 0.2); e2 by 0.3 (mean 0.3); e3 hurts
    # (counts 0) and has an invalid pair (counts 0); e4 helps its one target by 0.2.
    t = ["a", "b", "a", "c", "d", "b"]
    e = ["e1", "e1", "e2", "e3", "e3", "e4"]
    u = np.array([0.4, 0.0, 0.3, -0.5, np.nan, 0.2])
    ok = np.array([True, True, True, True, False, True])
    assert jobs.hub_examples(t, e, u, ok, 2) == ["e2", "e1"]
    assert jobs.hub_examples(t, e, u, ok, 9) == ["e2", "e1", "e4", "e3"]
    assert jobs.hub_examples(t, e, u, ok, 0) == []
    # ties go by id
    assert jobs.hub_examples(["a", "a"], ["z", "y"], np.array([0.1, 0.1]),
                             np.array([True, True]), 1) == ["y"]


def test_hubs_are_scored_against_every_target_once(store, lm, pool):
    v1, _ = pool
    ids = [s.sample_id for s in v1]
    options = dataclasses.replace(TINY_OPTIONS, hubs=2)
    out = score_utilities(store, lm, v1, v1, options, dataset="d")
    knn_pairs = expected_knn_pairs(store, lm, v1)
    stored = stored_pairs(store, lm)
    # the hubs are hub_examples over the kNN pairs' stored utilities
    scored = [(t, e, stored[(t, e)]) for t, e in sorted(knn_pairs)]
    hubs = jobs.hub_examples([x[0] for x in scored], [x[1] for x in scored],
                             np.array([x[2] for x in scored]),
                             np.array([not math.isnan(x[2]) for x in scored]), 2)
    full = {(t, h) for h in hubs for t in ids if t != h}
    assert set(stored) == knn_pairs | full
    assert out.n_pairs == out.n_computed == len(knn_pairs | full) > len(knn_pairs)
    assert out.graph == "exact + 2 hubs"
    run = store.get_run(out.run_id)
    assert (run["done"], run["total"], run["status"]) == (out.n_computed, out.n_computed,
                                                          "done")
    again = score_utilities(store, lm, v1, v1, options, dataset="d")
    assert (again.n_computed, again.n_reused) == (0, out.n_pairs)
    # hubs off: the same store serves the plain kNN pairs without computing anything
    plain = score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    assert (plain.n_pairs, plain.n_computed) == (len(knn_pairs), 0)


def test_hubs_must_be_a_count_or_auto():
    for bad in (-1, 1.5, True, "4", "Auto"):
        with pytest.raises(ValueError, match="hubs must be 'auto' or an integer >= 0"):
            ScoringOptions(hubs=bad).validate()
    ScoringOptions(hubs="auto").validate()


def test_auto_hubs_are_k_for_budgets_up_to_a_fifth_of_the_pool():
    auto = ScoringOptions(k=8)
    assert auto.hubs == "auto"
    assert [auto.resolved_hubs(m, 100) for m in (1, 10, 20, 21, 30, 100)] == \
        [8, 8, 8, 0, 0, 0]
    # scoring alone knows no budget; dense scoring has every pair already
    assert auto.resolved_hubs() == 0
    assert ScoringOptions(k=8, dense=True).resolved_hubs(10, 100) == 0
    # a count is a count, whatever the budget
    assert ScoringOptions(k=8, hubs=3).resolved_hubs(90, 100) == 3
    assert ScoringOptions(k=8, hubs=0).resolved_hubs(5, 100) == 0


def test_auto_hubs_score_nothing_without_a_budget(store, lm, pool):
    v1, _ = pool
    assert TINY_OPTIONS.hubs == "auto"
    out = score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    assert out.graph == "exact"
    assert set(stored_pairs(store, lm)) == expected_knn_pairs(store, lm, v1)


def test_an_interrupted_run_resumes_to_the_same_table(store, lm, pool, base, tmp_path,
                                                      monkeypatch):
    v1, _ = pool
    monkeypatch.setattr(jobs, "PAIR_COMMIT", 16)
    real = engines.score_pairs  # what the local engine runs

    def dies_after_first_chunk(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise RuntimeError("killed")
            yield chunk

    monkeypatch.setattr(engines, "score_pairs", dies_after_first_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    partial = stored_pairs(store, lm)
    assert 0 < len(partial) <= 16
    failed = store.runs(kind="score-utility")
    assert [r["status"] for r in failed] == ["failed"]
    assert failed[0]["error"] == "killed" and failed[0]["done"] == len(partial)

    monkeypatch.setattr(engines, "score_pairs", real)
    resumed = score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    assert resumed.n_computed == 60 - len(partial)
    assert resumed.n_reused == len(partial)
    runs = sorted(store.runs(kind="score-utility"), key=lambda r: r["started_at"])
    assert [r["status"] for r in runs] == ["failed", "done"]

    # an uninterrupted run in a second store gives the same table
    shutil.copytree(base, tmp_path / "other")
    other = Store(tmp_path / "other", lock_timeout=10)
    score_utilities(other, lm, v1, v1, TINY_OPTIONS)
    got, ref = stored_pairs(store, lm), stored_pairs(other, lm)
    assert set(got) == set(ref) and len(got) == 60
    np.testing.assert_allclose([got[p] for p in sorted(ref)], [ref[p] for p in sorted(ref)],
                               rtol=1e-5, atol=1e-6)
    assert store.query("SELECT count(*) FROM utilities")[0][0] == 60
    assert store.query("SELECT count(*) FROM losses")[0][0] == 20


def test_dense_scores_all_ordered_pairs_but_self(store, lm, pool):
    small = pool[0][:5]
    summary = score_utilities(store, lm, small, small,
                              dataclasses.replace(TINY_OPTIONS, dense=True))
    ids = [s.sample_id for s in small]
    assert set(stored_pairs(store, lm)) == {(t, e) for t in ids for e in ids if t != e}
    assert (summary.n_pairs, summary.n_computed, summary.graph) == (20, 20, "dense")
    assert summary.n_embedded == 0
    assert store.query("SELECT count(*) FROM embeddings")[0][0] == 0


def test_targets_and_examples_may_differ(store, lm, pool):
    v1, _ = pool
    targets, examples = v1[:4], v1[4:12]
    summary = score_utilities(store, lm, targets, examples, TINY_OPTIONS, k=2)
    pairs = set(stored_pairs(store, lm))
    assert summary.n_pairs == len(pairs) == 8
    assert {t for t, _ in pairs} == {s.sample_id for s in targets}
    assert {e for _, e in pairs} <= {s.sample_id for s in examples}


def test_empty_sets_raise(store, lm, pool):
    v1, _ = pool
    with pytest.raises(ValueError, match="no targets"):
        score_utilities(store, lm, [], v1, TINY_OPTIONS)
    with pytest.raises(ValueError, match="no candidate examples"):
        score_utilities(store, lm, v1, [], TINY_OPTIONS)
    with pytest.raises(ValueError, match="no candidate examples"):
        candidate_pairs(v1[:1], v1[:1], np.ones((1, 4)), np.ones((1, 4)), k=3)


def test_stored_utilities_equal_the_reference_and_make_a_kernel(store, lm, pool):
    v1, _ = pool
    small = v1[:8]
    score_utilities(store, lm, small, small, TINY_OPTIONS)
    got = stored_pairs(store, lm)
    pairs = sorted(got)
    ref = score_pairs_reference(lm, {s.sample_id: s for s in small}, pairs,
                                utility_config(lm, TINY_OPTIONS)).as_dict()
    assert np.isfinite(list(ref.values())).all()
    np.testing.assert_allclose([got[p] for p in pairs], [ref[p] for p in pairs], atol=1e-5)

    ids = [s.sample_id for s in small]
    kernel = utility_kernel_from_store(store, lm.fingerprint, utility_config(lm, TINY_OPTIONS)
                                       .config_hash(), ids, ids)
    m = dense(kernel)
    off = m - np.diag(np.diag(m))
    np.testing.assert_allclose(np.diag(m), off.max(axis=1))  # each row's best helper
    assert m.min() >= 0.0 and m.max() <= 1.0
    positive = {p: u for p, u in got.items() if u > 0}
    assert kernel.scale == pytest.approx(max(positive.values()) if positive else 1.0)
    assert (off > 0).sum() == len(positive)
    for (t, e), u in positive.items():
        assert kernel.value(t, e) == pytest.approx(u / kernel.scale, rel=1e-6)
    unit = dense(utility_kernel_from_store(store, lm.fingerprint, utility_config(lm, TINY_OPTIONS)
                                           .config_hash(), ids, ids, self_coverage="one"))
    np.testing.assert_array_equal(np.diag(unit), np.ones(8))
    np.testing.assert_array_equal(unit - np.diag(np.diag(unit)), off)


def test_ensure_embeddings_computes_only_missing_and_keeps_order(store, lm, pool):
    v1, _ = pool
    emb, n = ensure_embeddings(store, lm, v1[:5])
    assert n == 5 and emb.shape[0] == 5 and emb.dtype == np.float32
    emb2, n2 = ensure_embeddings(store, lm, list(reversed(v1[:7])))
    assert n2 == 2
    np.testing.assert_array_equal(emb2[2:], emb[::-1])
    empty, n0 = ensure_embeddings(store, lm, [])
    assert empty.shape == (0, 0) and n0 == 0


# -- kernels from the store ---------------------------------------------------------------


def fake_utilities(store):
    """Targets t1, t2 and examples t1, e1, e2 (t1 is both): hand-made utilities."""
    save_utilities(store, "m", "c",
                   ["t1", "t1", "t2", "t2", "t2", "t1"],
                   ["e1", "e2", "e1", "e2", "t1", "t1"],
                   [0.5, 2.0, -1.0, 1.0, 0.25, 9.0],   # (t1, t1) is a self pair: ignored
                   [0.0] * 6, [0.0] * 6, [True, True, True, False, True, True])


def test_utility_kernel_from_store_orientation_and_units(store):
    fake_utilities(store)
    kernel = utility_kernel_from_store(store, "m", "c", ["t1", "t2"], ["t1", "e1", "e2"])
    assert kernel.shape == (2, 3)                       # rows targets, columns examples
    assert kernel.scale == 2.0                          # largest valid positive off-diagonal
    np.testing.assert_allclose(dense(kernel), [[1.0, 0.25, 1.0],      # t1 covers itself as
                                               [0.125, 0.0, 0.0]])   # well as e2 does;
    unit = utility_kernel_from_store(store, "m", "c", ["t1", "t2"],    # (t2,e2) is invalid
                                     ["t1", "e1", "e2"], self_coverage="one")
    np.testing.assert_allclose(dense(unit), dense(kernel))  # t1's best helper is already 1
    assert kernel.value("t2", "t1") == pytest.approx(0.125)
    assert kernel.value("t1", "e2") == 1.0
    m = dense(kernel)
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert utility_scale(store, "m", "c", ["t1", "t2"], ["t1", "e1", "e2"]) == 2.0


def test_utility_scale_ignores_self_invalid_and_harmful_pairs(store):
    fake_utilities(store)
    assert utility_scale(store, "m", "c", ["t2"], ["e1", "e2"]) == 1.0      # none positive
    assert utility_scale(store, "m", "c", ["t2"], ["t1", "e1"]) == 0.25
    assert utility_scale(store, "m", "c", ["t1"], ["t1"]) == 1.0            # only a self pair
    assert utility_scale(store, "m", "nothing", ["t1"], ["e1"]) == 1.0


def test_shared_scale_puts_two_kernels_in_the_same_units(store):
    fake_utilities(store)
    # FLCG: the pool kernel and the private kernel use the larger of their two scales
    scale = max(utility_scale(store, "m", "c", ["t2"], ["t1"]),
                utility_scale(store, "m", "c", ["t2", "t1"], ["e1", "e2"]))
    assert scale == 2.0
    a = utility_kernel_from_store(store, "m", "c", ["t2"], ["t1"], scale)
    b = utility_kernel_from_store(store, "m", "c", ["t1", "t2"], ["e1", "e2"], scale)
    assert a.value("t2", "t1") == pytest.approx(0.25 / 2.0)
    assert b.value("t1", "e1") == pytest.approx(0.5 / 2.0)
    # without the shared scale the one-pair kernel would claim full coverage
    assert utility_kernel_from_store(store, "m", "c", ["t2"], ["t1"]).value("t2", "t1") == 1.0
