"""The quality prior in a stage: neighbour z-scores by hand, the drop rules, the modular
term in greedy, incremental scoring, and the record of what was left out."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from curator.config import QualityOptions, RecipeError, StageSpec
from curator.ingestion.ingest import ingest
from curator.scoring.jobs import ensure_quality
from curator.scoring.quality import score_quality
from curator.selection import select
from curator.stages import select_stage
from curator.stages.quality import AUTO_MAX_DROP, decide_drops, neighbour_z
from curator.store import Store
from curator.store.datasets import load_samples
from curator.store.selection_rows import get_selection, selection_sample_ids
from tests.helpers import TINY_OPTIONS, write_jsonl


def test_neighbour_z_by_hand():
    values = np.array([1.0, 2.0, 4.0, np.nan, 8.0])
    nb = np.array([[1, 2], [0, 2], [0, 1], [0, 1], [2, -1]])
    z = neighbour_z(values, nb)
    logs = np.log([1.0, 2.0, 4.0])
    # row 0: log 1 against log 2 and log 4 (mean log 2.83, sd ln(2)/2)
    assert z[0] == pytest.approx((logs[0] - logs[1:].mean()) / logs[1:].std())
    assert z[2] == pytest.approx((logs[2] - logs[:2].mean()) / logs[:2].std())
    assert z[3] == 0.0          # no value: no evidence
    assert z[4] == 0.0          # one neighbour is too few


def test_drop_rules():
    z = np.array([2.0, 0.1, 0.7, -1.0, 0.0, 0.2, 0.3, 0.0, 0.0, 0.0])
    ifd = np.array([0.5, 0.5, 0.5, 1.2, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    dropped, reasons = decide_drops(z, ifd, "auto", n_keep_min=3)
    assert dropped == [0, 2, 3]             # z > 0.5 worst first, then IFD >= 1
    assert "IFD 1.20" in reasons[3] and "z +2.00" in reasons[0]
    assert decide_drops(z, ifd, "20%", 3)[0] == [0, 2]
    assert decide_drops(z, ifd, "off", 3) == ([], {})
    assert decide_drops(z, ifd, "auto", n_keep_min=9)[0] == [0]   # never below the budget
    many = np.full(10, 3.0)
    assert len(decide_drops(many, np.zeros(10), "auto", 0)[0]) == int(AUTO_MAX_DROP * 10)


def test_options_are_validated():
    for bad in ({"signal": "nope"}, {"drop": "100%"}, {"drop": "x"}, {"weight": -1},
                {"k": 0}):
        with pytest.raises(RecipeError):
            QualityOptions(**bad).validate()
    QualityOptions(drop="12.5%", weight=0.5).validate()


def test_modular_term_matches_identity_rows():
    """FL + sum_a m[a] is FL on the kernel with diag(m) rows appended: same picks, same
    objective, for the compiled and the numpy greedy."""
    rng = np.random.default_rng(0)
    kernel = rng.random((12, 12))
    m = rng.random(12) * 0.8
    ref = select(np.vstack([kernel, np.diag(m)]), 5, backend="numpy", optimizer="naive")
    for backend in ("numpy", "numba"):
        got = select(kernel, 5, modular=m, backend=backend)
        assert got.ranking.tolist() == ref.ranking.tolist()
        assert got.objective == pytest.approx(ref.objective)
        np.testing.assert_allclose(got.gains, ref.gains, rtol=1e-9)
    with pytest.raises(ValueError, match="modular"):
        select(kernel, 5, modular=-m)


@pytest.fixture
def qstore(tmp_path, pair_rows):
    store = Store(tmp_path / "store", lock_timeout=10)
    for name, data in (("d", pair_rows(16)), ("q", pair_rows(3, start=50))):
        ingest(store, write_jsonl(tmp_path / f"{name}.jsonl", data), name)
    return store


def test_scoring_is_incremental(qstore, lm, tmp_path, pair_rows):
    pool = load_samples(qstore, "d", 1)
    rows, computed = ensure_quality(qstore, lm, pool)
    assert computed == 16
    ref = score_quality(lm, pool)
    np.testing.assert_allclose(rows.loss, ref.loss, rtol=1e-6)
    np.testing.assert_allclose(rows.stop_nll, ref.stop_nll, rtol=1e-6)
    assert ensure_quality(qstore, lm, pool)[1] == 0
    ingest(qstore, write_jsonl(tmp_path / "more.jsonl", pair_rows(4, start=100)), "d",
           append=True)
    assert ensure_quality(qstore, lm, load_samples(qstore, "d", 2))[1] == 4


@pytest.mark.parametrize("method", ["rds", "delift", "embedding", "less"])
def test_every_model_method_leaves_out_what_the_prior_drops(qstore, lm, method):
    spec = StageSpec(stage="task", method=method, budget="25%", target="q",
                     quality=QualityOptions(drop="25%"))
    out = select_stage(qstore, "d", spec, lm=lm, options=TINY_OPTIONS)
    rec = get_selection(qstore, out.selection_id)
    prior = rec.config["quality"]
    assert prior["n_dropped"] == 4 and prior["n_pool"] == 16 and rec.n_pool == 16
    assert not set(prior["dropped"]) & set(selection_sample_ids(qstore, out.selection_id))
    assert len(out.sample_ids) == 4
    assert any("quality prior" in n for n in out.notes)
    # the dropped rows are the worst by the combined z-score
    pool = load_samples(qstore, "d", 1)
    from curator.scoring.jobs import ensure_embeddings
    from curator.scoring.neighbours import knn
    from curator.stages.quality import signal_z

    emb, _ = ensure_embeddings(qstore, lm, pool)
    z = signal_z(ensure_quality(qstore, lm, pool)[0], knn(emb, emb, 15, exclude_self=True)
                 .indices, "combined")
    worst = {pool[i].sample_id for i in np.argsort(-z)[:4]}
    assert set(prior["dropped"]) == worst


def test_the_prior_is_on_by_default(qstore, lm):
    out = select_stage(qstore, "d", StageSpec(method="embedding", budget="4"), lm=lm,
                       options=TINY_OPTIONS)
    prior = get_selection(qstore, out.selection_id).config["quality"]
    assert (prior["signal"], prior["drop"], prior["weight"]) == ("combined", "auto", 1.0)
    off = select_stage(qstore, "d", StageSpec(method="embedding", budget="4",
                                              quality="off"), lm=lm, options=TINY_OPTIONS)
    assert "quality" not in get_selection(qstore, off.selection_id).config
    assert off.selection_id != out.selection_id


def test_prior_off_keeps_the_key_and_random_ignores_it(qstore, lm):
    plain = select_stage(qstore, "d", StageSpec(method="random", budget="4"), lm=lm,
                         options=TINY_OPTIONS)
    again = select_stage(qstore, "d", StageSpec(method="random", budget="4",
                                                quality=QualityOptions(drop="25%")),
                         lm=lm, options=TINY_OPTIONS)
    assert again.reused and again.selection_id == plain.selection_id


def test_weight_adds_the_modular_term(qstore, lm):
    off = QualityOptions.off()
    base = select_stage(qstore, "d", StageSpec(stage="task", method="rds", budget="25%",
                                               target="q", quality=off), lm=lm,
                        options=TINY_OPTIONS)
    heavy = select_stage(qstore, "d", StageSpec(stage="task", method="rds", budget="25%",
                                                target="q",
                                                quality=QualityOptions(drop="off",
                                                                       weight=100.0)),
                         lm=lm, options=TINY_OPTIONS)
    rec = get_selection(qstore, heavy.selection_id)
    assert rec.config["quality"]["weight"] == 100.0 and rec.config["quality"]["n_dropped"] == 0
    # with a huge weight RDS+ takes the rows of best quality (lowest z) regardless of targets
    pool = load_samples(qstore, "d", 1)
    from curator.scoring.jobs import ensure_embeddings
    from curator.scoring.neighbours import knn
    from curator.stages.quality import signal_z

    emb, _ = ensure_embeddings(qstore, lm, pool)
    z = signal_z(ensure_quality(qstore, lm, pool)[0], knn(emb, emb, 15, exclude_self=True)
                 .indices, "combined")
    assert set(heavy.sample_ids) == {pool[i].sample_id for i in np.argsort(z)[:4]}
    assert heavy.selection_id != base.selection_id
    shutil.rmtree(qstore.path / "artifacts", ignore_errors=True)


def test_delift_gains_sum_to_its_objective_without_the_modular_part(qstore, lm):
    out = select_stage(qstore, "d", StageSpec(method="delift", budget="4",
                                              quality=QualityOptions(drop="off", weight=2.0)),
                       lm=lm, options=TINY_OPTIONS)
    rec = get_selection(qstore, out.selection_id)
    assert out.gains.sum() == pytest.approx(rec.objective, abs=1e-6)


def test_task_candidates_above_dense_target_take_the_prior(qstore, lm, monkeypatch):
    # 3 targets x 16 rows > dense_target 0: kNN-gated, and the on-demand candidates are
    # ranked by similarity plus the prior's modular term (issue 24), not embeddings alone
    import dataclasses

    import curator.stages.evidence as evidence

    seen = []
    real = evidence.propose_pairs

    def spy(*args, **kwargs):
        seen.append(kwargs.get("col_bonus"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evidence, "propose_pairs", spy)
    opts = dataclasses.replace(TINY_OPTIONS, k=1, dense_target=0)
    out = select_stage(qstore, "d", StageSpec(stage="task", method="delift", budget="8",
                                              target="q",
                                              quality=QualityOptions(drop="off", weight=1.0)),
                       lm=lm, options=opts)
    bonuses = [b for b in seen if b is not None]
    assert bonuses, "the evidence loop proposed no target pairs"
    q = [b for b in bonuses if len(b) == 16]
    assert q and np.all((q[0] >= 0) & (q[0] <= 1)) and np.ptp(q[0]) > 0
    assert len(out.sample_ids) == 8


def test_dualsft_runs_without_the_prior_unless_asked():
    # the benchmark found the prior's filter to make warmed-up DualSFT worse
    assert StageSpec(method="dualsft").resolved_quality == QualityOptions.off()
    asked = StageSpec(method="dualsft", quality=QualityOptions(drop="10%"))
    assert asked.resolved_quality.drop == "10%"
    assert StageSpec(method="delift").resolved_quality == QualityOptions()
    assert StageSpec(method="gast").resolved_quality == QualityOptions()
