"""Stage selection: pools, budgets, every stage x method on a tiny store, the stored record
(objective recomputed by hand from the kernel), reuse of identical selections and the
zero-gain tail refill."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from curator.config import QualityOptions, RecipeError, ScoringOptions
from curator.config import StageSpec as _StageSpec
from curator.ingestion.ingest import ingest
from curator.scoring.embeddings import embedder_fingerprint
from curator.scoring.jobs import (
    EMBED_MAX_LENGTH,
    ensure_embeddings,
    score_utilities,
    utility_config,
    utility_kernel_from_store,
    utility_scale,
)
from curator.scoring.kernels import dense, embedding_kernel
from curator.stages import resolve_pools, select_stage
from curator.stages.baselines import rds_ranking
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.scores import load_embeddings, save_utilities
from curator.store.selection_rows import get_selection, selection_members
from tests.helpers import TINY_OPTIONS, write_jsonl

N_V1, N_NEW, N_Q = 24, 8, 4


def StageSpec(**kw) -> _StageSpec:  # noqa: N802 - stands in for the config class
    """These tests pin each method's mechanics over the whole pool, so the quality prior
    (on by default) is off here unless a test asks for it; tests/stages/
    test_quality_prior.py covers the prior."""
    kw.setdefault("quality", QualityOptions.off())
    return _StageSpec(**kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory, lm, pair_rows):
    """A store built once: "d" v1 (24), v2 = v1 + 8 new (append), target set "q" (4), with
    every sample embedded and v1 x v1 utilities scored. Tests work on copies."""
    root = tmp_path_factory.mktemp("curate-base")
    store = Store(root / "store", lock_timeout=10)
    ingest(store, write_jsonl(root / "v1.jsonl", pair_rows(N_V1)), "d")
    ingest(store, write_jsonl(root / "v2.jsonl", pair_rows(N_NEW, start=N_V1)), "d", append=True)
    ingest(store, write_jsonl(root / "q.jsonl", [{"prompt": f"Add {i} and {i + 1}.",
                                            "response": f"{2 * i + 1}"} for i in range(N_Q)]),
           "q")
    everyone = {s.sample_id: s for s in [*load_samples(store, "d", 2), *load_samples(store, "q", 1)]}
    ensure_embeddings(store, lm, list(everyone.values()))
    v1 = load_samples(store, "d", 1)
    score_utilities(store, lm, v1, v1, TINY_OPTIONS)
    return store.path


@pytest.fixture
def cstore(base, tmp_path):
    shutil.copytree(base, tmp_path / "store")
    return Store(tmp_path / "store", lock_timeout=10)


def ids(samples) -> list[str]:
    return [s.sample_id for s in samples]


def chash(lm) -> str:
    return utility_config(lm, TINY_OPTIONS).config_hash()


def embeddings(store, lm, sample_ids) -> np.ndarray:
    got = load_embeddings(store, embedder_fingerprint(lm, EMBED_MAX_LENGTH), sample_ids)
    return np.stack([got[i] for i in sample_ids])


def positions(pool_ids, picked) -> np.ndarray:
    where = {s: i for i, s in enumerate(pool_ids)}
    return np.array([where[s] for s in picked])


def check_stored(store, outcome, **expected):
    """The stored record and members agree with the outcome and with ``expected``."""
    rec = get_selection(store, outcome.selection_id)
    for key, value in expected.items():
        assert getattr(rec, key) == value, key
    assert rec.n_selected == len(outcome.sample_ids)
    members = selection_members(store, outcome.selection_id)
    assert [m["rank"] for m in members] == list(range(len(outcome.sample_ids)))
    assert [m["sample_id"] for m in members] == outcome.sample_ids
    assert len(set(outcome.sample_ids)) == len(outcome.sample_ids)
    return rec, members


# -- pools ------------------------------------------------------------------------------------


def test_resolve_pools_instruction_and_task(cstore):
    pools = resolve_pools(cstore, "d", StageSpec(stage="instruction", version=1))
    assert pools.version == 1 and ids(pools.pool) == ids(load_samples(cstore, "d", 1))
    assert pools.target == [] and pools.parent is None
    pools = resolve_pools(cstore, "d", StageSpec(stage="task", target="q"))
    assert pools.version == 2 and len(pools.pool) == N_V1 + N_NEW
    assert pools.target_ref == "q:1" and len(pools.target) == N_Q


def test_task_without_a_target_is_a_clear_error(cstore, lm):
    with pytest.raises(ValueError, match="task stage needs a target set"):
        resolve_pools(cstore, "d", StageSpec(stage="task", method="random"))
    with pytest.raises(RecipeError, match="task stage needs a target set"):
        select_stage(cstore, "d", StageSpec(stage="task"), lm=lm, options=TINY_OPTIONS)


def test_continual_with_nothing_previous_is_a_clear_error(cstore, lm):
    with pytest.raises(ValueError, match="continual stage needs something previous"):
        select_stage(cstore, "d", StageSpec(stage="continual"), lm=lm, options=TINY_OPTIONS)


def test_continual_pools_new_and_all(cstore):
    parent = select_stage(cstore, "d", StageSpec(method="random", budget="6", version=1))
    v1, v2 = ids(load_samples(cstore, "d", 1)), ids(load_samples(cstore, "d", 2))
    new = resolve_pools(cstore, "d", StageSpec(stage="continual", parent=parent.selection_id))
    assert set(ids(new.pool)) == set(v2) - set(v1) and len(new.pool) == N_NEW
    assert ids(new.previous) == parent.sample_ids          # in the parent's rank order
    assert new.parent == parent.selection_id
    every = resolve_pools(cstore, "d", StageSpec(stage="continual", pool="all",
                                                 parent=parent.selection_id))
    assert set(ids(every.pool)) == set(v2) - set(parent.sample_ids)
    assert len(every.pool) == N_V1 + N_NEW - 6
    # "previous" (or no parent) takes the given previous selection, else the latest one
    other = select_stage(cstore, "d", StageSpec(method="random", budget="3", version=1,
                                                seed=1))
    assert resolve_pools(cstore, "d", StageSpec(stage="continual")).parent == \
        other.selection_id
    assert resolve_pools(cstore, "d", StageSpec(stage="continual", parent="previous"),
                         previous_selection=parent.selection_id).parent == parent.selection_id


def test_continual_with_nothing_new_is_a_clear_error(cstore):
    parent = select_stage(cstore, "d", StageSpec(method="random", budget="6", version=1))
    with pytest.raises(ValueError, match="nothing new in d v1"):
        resolve_pools(cstore, "d", StageSpec(stage="continual", version=1,
                                             parent=parent.selection_id))


# -- budgets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "n"), [("5", 5), ("25%", 6), ("0.5", 12), ("100%", 24),
                                           ("24", 24)])
def test_budgets(cstore, budget, n):
    out = select_stage(cstore, "d", StageSpec(method="random", budget=budget, version=1))
    assert len(out.sample_ids) == n
    assert get_selection(cstore, out.selection_id).budget == budget


@pytest.mark.parametrize(("budget", "error", "message"), [
    ("0", RecipeError, "budget must be above 0"),
    ("150%", RecipeError, "budget above 100%"),
    ("lots", RecipeError, "budget must be a count"),
    ("25", ValueError, "larger than the pool of 24"),
])
def test_bad_budgets(cstore, budget, error, message):
    with pytest.raises(error, match=message):
        select_stage(cstore, "d", StageSpec(method="random", budget=budget, version=1))
    assert cstore.query("SELECT count(*) FROM selections")[0][0] == 0


def test_model_methods_need_a_model(cstore):
    with pytest.raises(ValueError, match="method embedding needs a model"):
        select_stage(cstore, "d", StageSpec(method="embedding"))


# -- model-free methods -----------------------------------------------------------------------


def test_random_is_seeded_and_reproducible(cstore):
    spec = StageSpec(method="random", budget="8", version=1, seed=7)
    a = select_stage(cstore, "d", spec)
    b = select_stage(cstore, "d", spec, reuse=False)
    assert a.selection_id != b.selection_id and a.sample_ids == b.sample_ids
    pool = ids(load_samples(cstore, "d", 1))
    assert a.sample_ids == [pool[i] for i in np.random.default_rng(7).permutation(24)[:8]]
    c = select_stage(cstore, "d", StageSpec(method="random", budget="8", version=1, seed=8))
    assert c.sample_ids != a.sample_ids
    check_stored(cstore, a, method="random", function=None, objective=None, model=None,
                 n_pool=24, n_selected=8)


def test_full_takes_the_whole_pool_in_order(cstore):
    out = select_stage(cstore, "d", StageSpec(method="full", budget="10%"))
    assert out.sample_ids == ids(load_samples(cstore, "d", 2))
    check_stored(cstore, out, method="full", n_pool=32, n_selected=32, version=2)


# -- rds --------------------------------------------------------------------------------------


def test_rds_ranking_is_round_robin_by_hand():
    pool = np.array([[0.9, 0.1], [0.8, 0.6], [0.1, 0.95], [0.2, 0.3], [0.7, 0.7]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    # target 0 orders the pool 0, 1, 4, 3, 2; target 1 orders it 2, 4, 1, 3, 0.
    # turns: t0 -> 0, t1 -> 2, t0 -> 1, t1 -> 4 (2 taken), t0 -> 3 (4 taken)
    assert rds_ranking(pool, targets, 5).tolist() == [0, 2, 1, 4, 3]
    assert rds_ranking(pool, targets, 3).tolist() == [0, 2, 1]
    assert rds_ranking(pool, targets[:1], 4).tolist() == [0, 1, 4, 3]
    # ties keep pool order
    assert rds_ranking(np.ones((4, 2)), targets, 4).tolist() == [0, 1, 2, 3]


def test_rds_stage_ranks_by_round_robin_cosine(cstore, lm):
    out = select_stage(cstore, "d", StageSpec(stage="task", method="rds", budget="6",
                                              target="q"), lm=lm, options=TINY_OPTIONS)
    pool = ids(load_samples(cstore, "d", 2))
    q = ids(load_samples(cstore, "q", 1))
    expected = rds_ranking(embeddings(cstore, lm, pool), embeddings(cstore, lm, q), 6)
    assert out.sample_ids == [pool[i] for i in expected]
    check_stored(cstore, out, stage="task", method="rds", function="round_robin_cosine",
                 objective=None, model=lm.fingerprint, target="q:1")


def test_rds_needs_a_target(cstore, lm):
    with pytest.raises(ValueError, match="rds ranks the pool by similarity to a target"):
        select_stage(cstore, "d", StageSpec(method="rds"), lm=lm, options=TINY_OPTIONS)


# -- DELIFT and the embedding baseline --------------------------------------------------------


def fl(S: np.ndarray, picked: np.ndarray) -> float:
    return float(S[:, picked].max(axis=1).sum())


def test_instruction_delift_facility_location(cstore, lm):
    spec = StageSpec(stage="instruction", method="delift", budget="25%", version=1,
                     harm="off")
    out = select_stage(cstore, "d", spec, lm=lm,
                       options=dataclasses.replace(TINY_OPTIONS, expand=0))
    assert out.scoring[0].n_computed == 0           # v1 x v1 was scored in the base store
    assert out.scoring[0].n_pairs == 72
    assert not out.reused
    assert all("zero gain" in n for n in out.notes)
    rec, members = check_stored(cstore, out, stage="instruction", method="delift",
                                function="facility_location", budget="25%", n_pool=24,
                                n_selected=6, parent=None, target=None,
                                model=lm.fingerprint, version=1)
    pool = ids(load_samples(cstore, "d", 1))
    S = dense(utility_kernel_from_store(cstore, lm.fingerprint, chash(lm), pool, pool))
    assert rec.objective == pytest.approx(fl(S, positions(pool, out.sample_ids)), rel=1e-5)
    gains = [m["gain"] for m in members]
    assert sum(gains) == pytest.approx(rec.objective, rel=1e-5)
    assert gains == sorted(gains, reverse=True)     # greedy gains never grow (submodular)
    np.testing.assert_allclose(out.gains, gains)
    assert rec.config["function"] == "facility_location"
    assert rec.config["utility_config"] == chash(lm)
    assert rec.config["k"] == 3 and rec.config["pool"] is None
    assert rec.config["kernel_nnz"] == {"kernel": int(sp.csr_matrix(S).nnz)}


def test_identical_selection_is_reused(cstore, lm):
    spec = StageSpec(stage="instruction", method="delift", budget="6", version=1)
    first = select_stage(cstore, "d", spec, lm=lm, options=TINY_OPTIONS)
    second = select_stage(cstore, "d", spec, lm=lm, options=TINY_OPTIONS)
    assert second.reused and not first.reused
    assert second.selection_id == first.selection_id
    assert second.sample_ids == first.sample_ids
    assert "reused" in second.notes[0]
    assert cstore.query("SELECT count(*) FROM selections")[0][0] == 1
    # reuse=False, or a different setting, selects again (reuse=False first: a larger budget
    # may score pairs that the same spec's kernel then reads, docs/design-notes.md)
    fourth = select_stage(cstore, "d", spec, lm=lm, options=TINY_OPTIONS, reuse=False)
    assert not fourth.reused and fourth.sample_ids == first.sample_ids
    third = select_stage(cstore, "d", StageSpec(stage="instruction", method="delift",
                                                budget="7", version=1), lm=lm, options=TINY_OPTIONS)
    assert not third.reused and third.selection_id != first.selection_id


def test_a_model_loader_is_called_only_for_model_methods(cstore, lm):
    calls = []

    def loader():
        calls.append(1)
        return lm

    select_stage(cstore, "d", StageSpec(method="random", budget="3"), lm=loader)
    assert calls == []
    out = select_stage(cstore, "d", StageSpec(method="embedding", budget="3", version=1),
                       lm=loader, options=TINY_OPTIONS)
    assert calls == [1] and get_selection(cstore, out.selection_id).model == lm.fingerprint


def test_instruction_embedding_baseline(cstore, lm):
    out = select_stage(cstore, "d", StageSpec(method="embedding", budget="6", version=1),
                       lm=lm, options=TINY_OPTIONS)
    rec, _ = check_stored(cstore, out, method="embedding", function="facility_location",
                          model=lm.fingerprint, n_pool=24)
    pool = ids(load_samples(cstore, "d", 1))
    S = dense(embedding_kernel(embeddings(cstore, lm, pool), pool, 3))
    assert rec.objective == pytest.approx(fl(S, positions(pool, out.sample_ids)), rel=1e-5)
    assert out.scoring == [] and "utility_config" not in rec.config
    assert cstore.query("SELECT count(*) FROM utilities")[0][0] == 72   # nothing scored


def test_task_delift_flvmi(cstore, lm):
    # harm "mean": no fit pairs (test_fit_pairs_are_scored_for_task_picks), only Q x pool
    out = select_stage(cstore, "d", StageSpec(stage="task", budget="6", version=1,
                                              target="q", harm="mean"), lm=lm, options=TINY_OPTIONS)
    rec, members = check_stored(cstore, out, stage="task", method="delift", function="flvmi",
                                target="q:1", n_pool=24, n_selected=6)
    assert len(out.scoring) == 1                    # FLVMI needs only Q x pool
    assert out.scoring[0].n_targets == N_Q and out.scoring[0].n_computed > 0
    pool, q = ids(load_samples(cstore, "d", 1)), ids(load_samples(cstore, "q", 1))
    Q = dense(utility_kernel_from_store(cstore, lm.fingerprint, chash(lm), q, pool)).T
    picked = positions(pool, out.sample_ids)
    # the paper's FLMI: sum_q max_a Q[a, q] + eta * sum_a max_q Q[a, q]
    expected = Q[picked].max(axis=0).sum() + Q[picked].max(axis=1).sum()
    assert rec.objective == pytest.approx(expected, rel=1e-5)
    assert sum(m["gain"] for m in members) == pytest.approx(rec.objective, rel=1e-5)
    if rec.config.get("zero_gain_refilled"):
        assert any("ordered by the candidates' mean utility" in n for n in out.notes)


def test_task_delift_flmi(cstore, lm):
    out = select_stage(cstore, "d", StageSpec(stage="task", function="flmi", budget="6",
                                              version=1, target="q", eta=0.5),
                       lm=lm, options=TINY_OPTIONS)
    rec, members = check_stored(cstore, out, function="flmi", target="q:1")
    assert [s.n_targets for s in out.scoring[:2]] == [24, N_Q]   # pool x pool, then Q x pool
    assert out.scoring[0].n_computed == 0
    pool, q = ids(load_samples(cstore, "d", 1)), ids(load_samples(cstore, "q", 1))
    fp, ch = lm.fingerprint, chash(lm)
    # FLMI takes the min of pool x pool and Q x pool coverage: both on one scale
    s_pool, s_query = utility_scale(cstore, fp, ch, pool, pool), utility_scale(cstore, fp, ch,
                                                                                 q, pool)
    assert s_pool != pytest.approx(s_query, rel=0.05)  # so a per-kernel scale would differ
    scale = max(s_pool, s_query)
    S = dense(utility_kernel_from_store(cstore, fp, ch, pool, pool, scale))
    Q = dense(utility_kernel_from_store(cstore, fp, ch, q, pool, scale)).T
    assert max(S.max(), Q.max()) == pytest.approx(1.0) and min(S.max(), Q.max()) < 0.95
    picked = positions(pool, out.sample_ids)
    # submodlib's FLMI: sum_i min(max_a S[i, a], eta * max_q Q[i, q])
    expected = np.minimum(S[:, picked].max(axis=1), 0.5 * Q.max(axis=1)).sum()
    assert rec.objective == pytest.approx(expected, rel=1e-5)
    assert rec.config["eta"] == 0.5


def test_continual_delift_flcg(cstore, lm):
    pool_kind = "new"
    parent = select_stage(cstore, "d", StageSpec(method="random", budget="6", version=1))
    out = select_stage(cstore, "d", StageSpec(stage="continual", budget="3", pool=pool_kind),
                       lm=lm, options=TINY_OPTIONS, previous_selection=parent.selection_id)
    pools = resolve_pools(cstore, "d", StageSpec(stage="continual", pool=pool_kind,
                                                 parent=parent.selection_id))
    rec, members = check_stored(cstore, out, stage="continual", function="flcg",
                                parent=parent.selection_id, version=2,
                                n_pool=len(pools.pool), n_selected=3)
    assert rec.config["pool"] == pool_kind
    assert set(out.sample_ids) <= set(ids(pools.pool))
    assert not set(out.sample_ids) & set(parent.sample_ids)
    assert [s.n_examples for s in out.scoring[:2]] == [len(pools.pool), 6]  # D x D, D x P
    pool, prev = ids(pools.pool), ids(pools.previous)
    fp, ch = lm.fingerprint, chash(lm)
    scale = max(utility_scale(cstore, fp, ch, pool, pool), utility_scale(cstore, fp, ch, pool,
                                                                         prev))
    S = dense(utility_kernel_from_store(cstore, fp, ch, pool, pool, scale))
    P = dense(utility_kernel_from_store(cstore, fp, ch, pool, prev, scale))
    picked = positions(pool, out.sample_ids)
    expected = np.maximum(S[:, picked].max(axis=1) - P.max(axis=1), 0.0).sum()
    assert rec.objective == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert sum(m["gain"] for m in members) == pytest.approx(rec.objective, rel=1e-5, abs=1e-6)


# -- evidence on demand, harmful examples, the zero-gain tail ---------------------------------


def test_zero_gain_tail_is_ordered_by_utility_evidence(cstore, lm):
    """One hub example helps every target fully and every other pair hurts: the others are
    harmful (negative mean utility) and left out, nothing more can be scored (every pair is
    stored), so after the hub the budget is filled by mean utility, never by embeddings."""
    pool = ids(load_samples(cstore, "d", 1))
    hub = pool[5]
    cfg = chash(lm)
    cstore.query("DELETE FROM utilities")
    pairs = [(t, e) for t in pool for e in pool if t != e]
    # harm grows with the example's index: the least harmful come first in the tail
    save_utilities(cstore, lm.fingerprint, cfg, [t for t, _ in pairs], [e for _, e in pairs],
                   [1.0 if e == hub else -0.01 * (1 + pool.index(e)) for _, e in pairs],
                   [0.5] * len(pairs), [0.5] * len(pairs), [True] * len(pairs))
    out = select_stage(cstore, "d", StageSpec(budget="6", version=1, harm="mean"), lm=lm,
                       options=TINY_OPTIONS)
    assert out.scoring[0].n_computed == 0            # every candidate pair was stored
    assert out.sample_ids == [hub, *pool[:5]]
    rec, members = check_stored(cstore, out, objective=23.0)
    assert rec.config["zero_gain_refilled"] == 5 == rec.config["zero_gain_picks"]
    assert rec.config["harmful_excluded"] == 23
    assert rec.config["evidence"]["extra_pairs"] == 0   # the blind row (the hub) has no unscored pair
    assert [m["gain"] for m in members] == [23.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert any("left out 23 harmful" in n for n in out.notes)


def test_harmful_examples_are_left_out(cstore, lm):
    """Example j hurts every target it was scored with, but helps one a little: with the
    filter it is never picked, without it greedy takes it for that bit of coverage."""
    pool = ids(load_samples(cstore, "d", 1))
    cfg = chash(lm)
    cstore.query("DELETE FROM utilities")
    bad = pool[0]
    pairs = [(t, e) for t in pool for e in pool if t != e]
    u = []
    for t, e in pairs:
        if e == bad:
            u.append(0.9 if t == pool[1] else -0.9)       # mean over 23 targets: < 0
        else:
            u.append(0.1 if pool.index(t) % 12 == pool.index(e) % 12 else 0.0)
    save_utilities(cstore, lm.fingerprint, cfg, [t for t, _ in pairs], [e for _, e in pairs],
                   u, [0.5] * len(pairs), [0.5] * len(pairs), [True] * len(pairs))
    kept = select_stage(cstore, "d", StageSpec(budget="6", version=1, harm="mean"), lm=lm,
                        options=TINY_OPTIONS)
    assert bad not in kept.sample_ids
    assert kept.record.config["harmful_excluded"] == 1
    off = select_stage(cstore, "d", StageSpec(budget="6", version=1, harm="off"), lm=lm,
                       options=TINY_OPTIONS)
    assert off.sample_ids[0] == bad and off.record.config["harmful_excluded"] == 0


def test_examples_their_neighbours_do_not_fit_are_left_out(cstore, lm):
    """Example j helps every target a little in context (mean utility > 0: "mean" keeps
    it), but every example makes j's own response less likely (a wrong response): with
    "mean+fit", the default, it is left out and recorded as unfit."""
    pool = ids(load_samples(cstore, "d", 1))
    cfg = chash(lm)
    cstore.query("DELETE FROM utilities")
    bad = pool[0]
    pairs = [(t, e) for t in pool for e in pool if t != e]
    u = []
    for t, e in pairs:
        if t == bad:
            u.append(-0.05)                              # nothing fits bad's response
        elif e == bad:
            u.append(0.3)                                # bad looks helpful in context
        else:
            u.append(0.1 if pool.index(t) % 8 == pool.index(e) % 8 else 0.0)
    save_utilities(cstore, lm.fingerprint, cfg, [t for t, _ in pairs], [e for _, e in pairs],
                   u, [0.5] * len(pairs), [0.5] * len(pairs), [True] * len(pairs))
    mean_only = select_stage(cstore, "d", StageSpec(budget="6", version=1, harm="mean"),
                             lm=lm, options=TINY_OPTIONS)
    assert mean_only.sample_ids[0] == bad
    assert mean_only.record.config["harmful_excluded"] == 0
    out = select_stage(cstore, "d", StageSpec(budget="6", version=1), lm=lm, options=TINY_OPTIONS)
    assert out.record.config["harm"] == "mean+fit"
    assert bad not in out.sample_ids
    assert out.record.config["harmful_excluded"] == 1 == out.record.config["unfit_excluded"]
    assert out.record.config["evidence"]["fit_pairs"] == 0     # pool x pool had them all
    assert any("made their own response less likely" in n for n in out.notes)


def test_fit_pairs_are_scored_for_task_picks(cstore, lm):
    """FLVMI scores only targets x pool; with "mean+fit" each pick lacking fit evidence gets
    FIT_PAIRS pairs (the pick as the target, its most similar pool examples), equal to the
    reference engine's values, and the picks are made again with them."""
    from curator.scoring.utility import score_pairs_reference
    from curator.stages.evidence import FIT_PAIRS
    from curator.store.scores import load_utilities

    pool_samples = load_samples(cstore, "d", 1)
    pool = ids(pool_samples)
    cstore.query("DELETE FROM utilities")
    out = select_stage(cstore, "d", StageSpec(stage="task", budget="6", version=1, target="q"),
                       lm=lm, options=TINY_OPTIONS)
    ev = out.record.config["evidence"]
    rows = load_utilities(cstore, lm.fingerprint, chash(lm), pool, pool)
    fit = list(zip(rows.target_id, rows.example_id, strict=True))
    assert ev["fit_pairs"] == len(fit) > 0 and ev["fit_rounds"] >= 1
    # every pick in the positive-gain head has its fit pairs (or was left out for them)
    members = selection_members(cstore, out.selection_id)
    head = [m["sample_id"] for m in members if m["gain"] > 0]
    per_target = {t: sum(1 for x, _ in fit if x == t) for t in pool}
    assert all(per_target[t] == FIT_PAIRS for t in head)
    assert max(per_target.values()) == FIT_PAIRS
    assert all(t != e for t, e in fit)
    ref = score_pairs_reference(lm, {s.sample_id: s for s in pool_samples}, fit,
                                utility_config(lm, TINY_OPTIONS)).as_dict()
    np.testing.assert_allclose([dict(zip(fit, rows.utility, strict=True))[p] for p in ref],
                               list(ref.values()), rtol=1e-4, atol=1e-5)
    # the record names what the fit pairs left out, and a rerun scores nothing new
    unfit = out.record.config["unfit_excluded"]
    again = select_stage(cstore, "d", StageSpec(stage="task", budget="6", version=1,
                                                target="q"), lm=lm, options=TINY_OPTIONS)
    assert again.sample_ids == out.sample_ids and again.record.config["unfit_excluded"] == unfit
    assert sum(r.n_computed for r in again.scoring) == 0


@pytest.mark.slow  # rounds of pair scoring on a tiny model: make test-slow
def test_pairs_scored_on_demand_fill_the_budget_with_measured_utilities(cstore, lm):
    """A 1-NN graph leaves most of a half-pool budget at zero gain; with ``expand`` the
    stage scores more pairs where the kernel is blind and the zero-gain tail shrinks. Every
    pair scored on demand equals the reference engine's value (dense computation)."""
    from curator.scoring.utility import score_pairs_reference
    from curator.store.scores import load_utilities

    pool_samples = load_samples(cstore, "d", 1)
    pool = ids(pool_samples)
    cstore.query("DELETE FROM utilities")
    opts = dataclasses.replace(TINY_OPTIONS, k=1, hubs=0)
    spec = StageSpec(budget="12", version=1, harm="off")
    blind = select_stage(cstore, "d", spec, lm=lm, options=dataclasses.replace(opts, expand=0))
    n_graph = int(cstore.query("SELECT count(*) FROM utilities")[0][0])
    assert blind.record.config["zero_gain_picks"] > 0
    out = select_stage(cstore, "d", spec, lm=lm, options=dataclasses.replace(opts, expand=3))
    ev = out.record.config["evidence"]
    n_all = int(cstore.query("SELECT count(*) FROM utilities")[0][0])
    assert ev["graph_pairs"] == n_graph and ev["extra_pairs"] == n_all - n_graph > 0
    assert ev["extra_pairs"] <= 3 * n_graph
    assert out.record.config["zero_gain_picks"] < blind.record.config["zero_gain_picks"]
    rows = load_utilities(cstore, lm.fingerprint, chash(lm), pool, pool)
    ref = score_pairs_reference(lm, {s.sample_id: s for s in pool_samples},
                                list(zip(rows.target_id, rows.example_id, strict=True)),
                                utility_config(lm, opts)).as_dict()
    got = dict(zip(zip(rows.target_id, rows.example_id, strict=True), rows.utility, strict=True))
    assert set(got) == set(ref)
    np.testing.assert_allclose([got[p] for p in ref], list(ref.values()), rtol=1e-4, atol=1e-5)
    # the objective is facility location on the kernel of every stored pair
    S = dense(utility_kernel_from_store(cstore, lm.fingerprint, chash(lm), pool, pool))
    assert out.record.objective == pytest.approx(fl(S, positions(pool, out.sample_ids)),
                                                 rel=1e-5)


def test_continual_embedding_flcg_over_all_unused_samples(cstore, lm):
    parent = select_stage(cstore, "d", StageSpec(method="random", budget="6", version=1))
    out = select_stage(cstore, "d", StageSpec(stage="continual", method="embedding",
                                              budget="4", pool="all",
                                              parent=parent.selection_id),
                       lm=lm, options=TINY_OPTIONS)
    pools = resolve_pools(cstore, "d", StageSpec(stage="continual", pool="all",
                                                 parent=parent.selection_id))
    rec, members = check_stored(cstore, out, function="flcg", parent=parent.selection_id,
                                n_pool=N_V1 + N_NEW - 6, n_selected=4)
    assert rec.config["pool"] == "all"
    assert not set(out.sample_ids) & set(parent.sample_ids)
    pool, prev = ids(pools.pool), ids(pools.previous)
    S = dense(embedding_kernel(embeddings(cstore, lm, pool), pool, 3))
    P = dense(embedding_kernel(embeddings(cstore, lm, pool), pool, 3,
                               col_emb=embeddings(cstore, lm, prev), col_ids=prev))
    picked = positions(pool, out.sample_ids)
    expected = np.maximum(S[:, picked].max(axis=1) - P.max(axis=1), 0.0).sum()
    assert rec.objective == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert cstore.query("SELECT count(*) FROM utilities")[0][0] == 72   # nothing scored


def test_query_k_rule() -> None:
    from curator.config import ScoringOptions
    from curator.stages.delift import _query_k

    off = {"dense_target": 0}
    assert _query_k(ScoringOptions(k=4, **off), n_select=90, n_query=30, n_pool=300) == 6
    assert _query_k(ScoringOptions(k=16, **off), n_select=90, n_query=30, n_pool=300) == 16
    assert _query_k(ScoringOptions(k=4, query_k=0), 90, 30, 300) == 300
    assert _query_k(ScoringOptions(k=4, query_k=50), 90, 30, 40) == 40
    # target x pool within dense_target (20,000 by default): every pair, as the reference
    assert _query_k(ScoringOptions(k=4), n_select=90, n_query=30, n_pool=300) == 300
    assert _query_k(ScoringOptions(k=4), n_select=90, n_query=30, n_pool=700) == 6
    assert _query_k(ScoringOptions(k=4, dense_target=9000), 90, 30, 300) == 300


def test_stage_key_ignores_settings_at_their_new_defaults(cstore):
    # "hubs" came after selections were stored: at its default (0) it leaves the key as it
    # was, so stored selections are still found; any other value makes another selection.
    from curator.config import config_hash as raw_hash
    from curator.stages import stage_key

    spec = StageSpec(method="random", budget="4", version=1)
    pools = resolve_pools(cstore, "d", spec)
    from curator.config import ENGINE_KEYS  # where scoring runs: never part of the key

    old_options = {k: v for k, v in vars(TINY_OPTIONS).items()
                   if k not in ("hubs", "expand", "tokens", "dense_target", *ENGINE_KEYS)}
    old_key = raw_hash({"dataset": "d", "version": 1, "pool": ids(pools.pool), "target": None,
                        "parent": None,
                        "spec": {k: v for k, v in vars(spec).items()
                                 if k not in ("name", "version", "parent", "self_coverage",
                                              "harm", "gradient", "quality")},
                        "options": old_options, "model": None})
    off = dataclasses.replace(TINY_OPTIONS, hubs=0)  # what select_stage resolves "auto" to here
    assert stage_key("d", spec, pools, off, None) == old_key
    hubs = ScoringOptions(**{**vars(TINY_OPTIONS), "hubs": 2})
    assert stage_key("d", spec, pools, hubs, None) != old_key


def test_stage_key_of_gradient_methods(cstore):
    """DualSFT's gradient settings are part of its key; gradient selections stored before
    cross-fitting, signed masks and GAST's union budget are not reused as identical."""
    from curator.config import GradientOptions
    from curator.config import config_hash as raw_hash
    from curator.stages import stage_key

    spec = StageSpec(method="dualsft", budget="4", version=1)
    pools = resolve_pools(cstore, "d", spec)
    warm = dataclasses.replace(spec, gradient=GradientOptions(warmup_steps=3))
    assert stage_key("d", spec, pools, TINY_OPTIONS, "m") != stage_key("d", warm, pools, TINY_OPTIONS,
                                                                  "m")
    less = StageSpec(method="less", budget="4", version=1)
    before = raw_hash({"dataset": "d", "version": 1, "pool": ids(pools.pool), "target": None,
                       "parent": None,
                       "spec": {k: v for k, v in vars(less).items()
                                if k not in ("name", "version", "parent", "self_coverage",
                                             "gradient")},
                       "options": vars(TINY_OPTIONS), "model": "m"})
    assert stage_key("d", less, pools, TINY_OPTIONS, "m") != before


def test_auto_hubs_at_small_budgets(cstore, lm):
    # 4 of 24 is at most a fifth of the pool: "auto" scores k (3) hub columns in full
    small = select_stage(cstore, "d", StageSpec(stage="instruction", budget="4", version=1),
                         lm=lm, options=TINY_OPTIONS)
    run = small.scoring[0]
    assert run.graph == "exact + 3 hubs" and run.n_pairs > 72
    assert small.record.config["hubs"] == 3
    assert any("3 hub examples" in n and "scoring.hubs: auto" in n for n in small.notes)
    # the count "auto" became is the setting: asking for 3 hubs is the same selection
    again = select_stage(cstore, "d", StageSpec(stage="instruction", budget="4", version=1),
                         lm=lm, options=dataclasses.replace(TINY_OPTIONS, hubs=3))
    assert again.reused and again.selection_id == small.selection_id
    # 6 of 24 is more than a fifth: no hubs, and the same key as hubs off (0)
    large = select_stage(cstore, "d", StageSpec(stage="instruction", budget="6", version=1),
                         lm=lm, options=TINY_OPTIONS)
    assert "hubs" not in large.scoring[0].graph and "hubs" not in large.record.config
    off = select_stage(cstore, "d", StageSpec(stage="instruction", budget="6", version=1),
                       lm=lm, options=dataclasses.replace(TINY_OPTIONS, hubs=0))
    assert off.reused and off.selection_id == large.selection_id
    # other methods score no hubs, whatever the budget
    emb = select_stage(cstore, "d", StageSpec(method="embedding", budget="2", version=1),
                       lm=lm, options=TINY_OPTIONS)
    assert "hubs" not in emb.record.config


@pytest.mark.slow  # kills a stage process: make test-slow
def test_a_stage_killed_while_scoring_on_demand_reruns_to_the_same_result(cstore, lm, tmp_path,
                                                                         monkeypatch):
    """Killed in the middle of a round of on-demand pairs (some of them committed), the rerun
    replays the rounds as they were: same members, same gains, same pairs in the store."""
    import curator.stages.evidence as ev

    cstore.query("DELETE FROM utilities")
    shutil.copytree(cstore.path, tmp_path / "twin")
    twin = Store(tmp_path / "twin", lock_timeout=10)
    opts = dataclasses.replace(TINY_OPTIONS, k=1, hubs=0, expand=3)
    spec = StageSpec(budget="12", version=1, harm="off")
    whole = select_stage(cstore, "d", spec, lm=lm, options=opts)
    assert whole.record.config["evidence"]["rounds"] >= 1

    real = ev.score_pair_list

    def killed(store, lm_, samples, pairs, options, **kw):
        real(store, lm_, samples, pairs[: len(pairs) // 2], options, **kw)  # half committed
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ev, "score_pair_list", killed)
    with pytest.raises(KeyboardInterrupt):
        select_stage(twin, "d", spec, lm=lm, options=opts)
    monkeypatch.setattr(ev, "score_pair_list", real)
    again = select_stage(twin, "d", spec, lm=lm, options=opts)
    assert again.sample_ids == whole.sample_ids
    # The rerun scores the round's other half in batches of other widths; on some CPUs
    # (an AMD EPYC) fp32 kernels then round d(i|j) of a few pairs one ulp differently
    # (5.5288 vs 5.5288 + 5e-7), which moved one gain by 2e-5 relative.
    np.testing.assert_allclose(again.gains, whole.gains, rtol=1e-4, atol=1e-6)
    pairs = "SELECT target_id, example_id FROM utilities ORDER BY ALL"
    assert twin.query(pairs) == cstore.query(pairs)
