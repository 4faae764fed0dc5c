"""Cross-fitting: with no target set, no sample is scored against its own gradient."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from curator.scoring import gradients as gr


@pytest.fixture(scope="module")
def make_samples(make_samples):
    """Shorter prompts and responses than conftest's default."""
    return functools.partial(make_samples, prompt_words=(1, 6), response_words=(1, 8))


def test_folds_partition_the_pool_and_share_the_holdout():
    holdout = [1, 4, 5, 9, 12, 13, 17]
    folds = gr.crossfit_folds(20, holdout, n_folds=3, seed=4)
    assert len(folds) == 3
    assert sorted(i for f in folds for i in f) == list(range(20))
    assert sorted(len(set(f) & set(holdout)) for f in folds) == [2, 2, 3]
    assert sorted(len(set(f) - set(holdout)) for f in folds) == [4, 4, 5]
    assert gr.crossfit_folds(20, holdout, n_folds=3, seed=4) == folds  # seeded
    assert len(gr.crossfit_folds(20, [2, 3], n_folds=5)) == 2  # K <= |holdout|
    with pytest.raises(ValueError, match="two held-out"):
        gr.crossfit_folds(20, [3])


def test_toy_held_out_samples_are_not_over_represented_in_the_top_picks():
    """N=1000 near-orthogonal 'gradients' (pairwise cosine ~0.02), 10% held out. Against
    the plain held-out mean, each held-out sample's score carries |g|^2 / 100 = 20 against
    cross terms of spread ~4.5, so (old behaviour) nearly every top pick is held out. With
    cross-fitting the held-out share of the top 100 stays near its 10% base rate."""
    rng = np.random.default_rng(0)
    N, D = 1000, 2000
    g = torch.as_tensor(rng.standard_normal((N, D)), dtype=torch.float64)
    holdout = gr.holdout_slice(N, 0.1, seed=0)
    assert len(holdout) == 100
    top = 100

    def heldout_share(scores: torch.Tensor) -> float:
        picked = torch.topk(scores, top).indices.tolist()
        return len(set(picked) & set(holdout)) / top

    v_all = g[holdout].mean(0)
    assert heldout_share(g @ v_all) > 0.9  # the bug: self-alignment wins

    folds = gr.crossfit_folds(N, holdout, seed=0)
    hset = set(holdout)
    sums = [{"w": g[[i for i in f if i in hset]].sum(0)} for f in folds]
    counts = [sum(i in hset for i in f) for f in folds]
    v_new, v_folds = gr.leave_fold_out(sums, counts)
    torch.testing.assert_close(v_new["w"], v_all)
    scores = torch.empty(N, dtype=torch.float64)
    for f, v in zip(folds, v_folds, strict=True):
        held_here = [i for i in f if i in hset]
        # fold k's direction is the mean of the other folds' held-out gradients
        others = sorted(hset - set(held_here))
        torch.testing.assert_close(v["w"], g[others].mean(0))
        scores[f] = g[f] @ v["w"]
    assert heldout_share(scores) <= 0.2


def test_less_scores_of_held_out_samples_leave_their_own_gradient_out(tiny_llama, make_samples):
    """End to end on a tiny model, against exact per-sample gradients: every sample of
    fold k is scored against the mean gradient of the held-out samples outside fold k (the
    old code scored all against the mean over all held-out samples, its own included)."""
    pool = make_samples(10, seed=5)
    scope = gr.resolve_scope(tiny_llama.model)
    stats = gr.gradient_statistics(tiny_llama, pool, None, scope=scope, holdout_fraction=0.4,
                                   seed=1, n_folds=2)
    assert len(stats.holdout) == 4 and len(stats.folds) == 2
    assert "cross-fitted over 2 folds" in stats.v_new_source
    got = gr.alignment_scores(tiny_llama, pool, stats, scope).total
    exact = list(gr.per_sample_gradients(tiny_llama, pool, scope))
    hset = set(stats.holdout)
    for fold in stats.folds:
        others = [i for i in stats.holdout if i not in fold]
        v = {k: torch.stack([exact[i][k] for i in others]).mean(0) for k in exact[0]}
        for n in fold:
            want = sum(float((v[k] * exact[n][k]).sum()) for k in v)
            assert got[n] == pytest.approx(want, rel=1e-4, abs=1e-7)
    # and the held-out samples' scores differ from the self-aligned ones
    v_all = {k: torch.stack([exact[i][k] for i in stats.holdout]).mean(0) for k in exact[0]}
    self_aligned = [sum(float((v_all[k] * exact[h][k]).sum()) for k in v_all) for h in hset]
    assert not np.allclose([got[h] for h in hset], self_aligned, rtol=1e-3)


def test_a_target_set_is_not_cross_fitted(tiny_llama, make_samples):
    pool, targets = make_samples(6, seed=2), make_samples(2, seed=3)
    scope = gr.resolve_scope(tiny_llama.model)
    stats = gr.gradient_statistics(tiny_llama, pool, targets, scope=scope)
    assert stats.folds == [] and stats.holdout == []
    got = gr.alignment_scores(tiny_llama, pool, stats, scope).total
    want = gr.hook_scores(tiny_llama, pool, stats.v_new, scope).total
    np.testing.assert_allclose(got, want)
