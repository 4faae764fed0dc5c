"""GAST: per-layer scores, the sampled and top-k rules, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.scoring import gradients as gr
from curator.selection.gast import choose, layer_subsets
from curator.stages.gradient_passes import gast_select, torch_uniforms


def test_choose_topk_and_nan():
    scores = np.array([0.1, 3.0, np.nan, 2.0, -1.0, 2.0])
    assert choose(scores, 3, "topk") == [1, 3, 5]
    assert choose(scores, 10, "topk") == [1, 3, 5, 0, 4]  # NaN never picked


def test_choose_sampling_is_seeded():
    scores = np.random.default_rng(0).normal(size=60)
    a = choose(scores, 10, "sample", 1.0, np.random.default_rng(3))
    b = choose(scores, 10, "sample", 1.0, np.random.default_rng(3))
    c = choose(scores, 10, "sample", 1.0, np.random.default_rng(4))
    assert a == b and a != c and len(set(a)) == 10
    # a vanishing temperature turns sampling into top-k
    cold = choose(scores, 10, "sample", 1e-6, np.random.default_rng(5))
    assert cold == choose(scores, 10, "topk")


def _torch_choose(scores, k, rule, temperature, generator):
    """The rule as it was written in torch (before selection/ became numpy only)."""
    ok = np.flatnonzero(~np.isnan(scores))
    x = torch.as_tensor(scores[ok], dtype=torch.float64)
    keys = x
    if rule == "sample":
        std = x.std(unbiased=False)
        z = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0)
        keys = z / temperature - torch.log(-torch.log(u))
    order = torch.sort(keys, descending=True, stable=True).indices[:min(k, ok.size)]
    return [int(ok[i]) for i in order]


@pytest.mark.parametrize("rule", ["sample", "topk"])
def test_the_numpy_rule_draws_what_the_torch_rule_drew(rule):
    """Seeded by a torch generator through torch_uniforms (as the stages and
    curator.training.finetune pass it), the numpy rule picks exactly what the torch rule picked."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        scores = rng.normal(size=40) * 10.0 ** rng.integers(-3, 3)
        scores[rng.integers(0, 40, size=3)] = np.nan
        if trial % 5 == 0:
            scores[:20] = 1.5  # ties
        want = _torch_choose(scores, 15, rule, 0.7, torch.Generator().manual_seed(trial))
        assert choose(scores, 15, rule, 0.7,
                      torch_uniforms(torch.Generator().manual_seed(trial))) == want


def test_a_bare_torch_generator_is_refused_with_the_wrapper_named():
    """selection/ imports no torch: a torch.Generator must come through torch_uniforms."""
    with pytest.raises(TypeError, match="torch_uniforms"):
        choose(np.arange(5.0), 2, "sample", 1.0, torch.Generator().manual_seed(0))


def test_sampling_prefers_high_scores():
    scores = np.arange(100, dtype=float)
    gen = torch_uniforms(torch.Generator().manual_seed(0))
    picks = [i for _ in range(50) for i in choose(scores, 5, "sample", 0.5, gen)]
    assert np.mean(picks) > 75


def test_bad_rule_and_temperature():
    with pytest.raises(ValueError, match="rule"):
        choose(np.zeros(3), 1, "greedy")
    with pytest.raises(ValueError, match="temperature"):
        choose(np.zeros(3), 1, "sample", 0.0)


def test_gast_select_layers_scores_and_reproducibility(tiny_lm, make_samples):
    pool, targets = make_samples(10), make_samples(3, seed=1)
    r = gast_select(tiny_lm, pool, targets, budget=4, seed=7)
    assert len(r.layers) == 2 and r.layers == list(r.layer_subsets)
    sizes = {len(v) for v in r.layer_subsets.values()}
    assert len(sizes) == 1 and 2 <= sizes.pop() <= 4  # at least layer_share 0.5 of 4
    assert all(len(set(v)) == len(v) for v in r.layer_subsets.values())
    assert set().union(*map(set, r.layer_subsets.values())) == set(r.union)
    assert len(r.union) == 4  # the budget is the union that training touches
    assert r.support.startswith("mean gradient of the target set")
    again = gast_select(tiny_lm, pool, targets, budget=4, seed=7)
    assert again.layer_subsets == r.layer_subsets
    # per-layer scores are <g_n^l, s^l> with s the mean target gradient
    scope = gr.resolve_scope(tiny_lm.model)
    s, _ = gr.mean_gradient(tiny_lm, targets, scope)
    _, exact = gr.exact_scores(tiny_lm, pool, s, scope).per_layer()
    np.testing.assert_allclose(r.scores, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    top = gast_select(tiny_lm, pool, targets, budget=4, rule="topk")
    want, union = layer_subsets(exact, 4, "topk")
    assert list(top.layer_subsets.values()) == want and top.union == union
    ids = r.subsets_by_id(pool)
    assert {k: [pool[i].sample_id for i in v] for k, v in r.layer_subsets.items()} == ids


def test_gast_bad_input(tiny_llama, make_samples):
    pool = make_samples(4)
    with pytest.raises(ValueError, match="target set is empty"):
        gast_select(tiny_llama, pool, [], budget=2)
    with pytest.raises(ValueError, match="budget"):
        gast_select(tiny_llama, pool, pool, budget=1.5)
    with pytest.raises(ValueError, match="rule"):
        gast_select(tiny_llama, pool, pool, budget=2, rule="best")


def test_layer_subsets_by_hand_topk():
    """Two layers with opposite preferences, budget 4: round 0 layer 0 takes 0, layer 1
    takes 9; round 1 (layer 1 first) takes 8 and 1; the union is full and each layer holds
    half of it. With layer_share 1 each goes on inside the union until it holds all 4."""
    scores = np.stack([np.arange(10, 0, -1), np.arange(1, 11)], axis=1).astype(float)
    subsets, union = layer_subsets(scores, 4, "topk", layer_share=0.5)
    assert subsets == [[0, 1], [9, 8]] and union == [0, 9, 8, 1]
    subsets, union = layer_subsets(scores, 4, "topk", layer_share=1.0)
    assert subsets == [[0, 1, 8, 9], [9, 8, 1, 0]] and union == [0, 9, 8, 1]
    # layers that agree: each takes the same top 4, and the union is those 4
    same = np.stack([np.arange(10, 0, -1)] * 3, axis=1).astype(float)
    subsets, union = layer_subsets(same, 4, "topk")
    assert subsets == [[0, 1, 2, 3]] * 3 and sorted(union) == [0, 1, 2, 3]


@pytest.mark.parametrize("rule", ["sample", "topk"])
def test_layer_subsets_union_stays_within_the_budget(rule):
    """Independent per-layer draws of k = 30% each cover most of the pool (what the old
    rule stored); the round-robin draw keeps the union at the budget."""
    rng = np.random.default_rng(1)
    N, L, k = 100, 8, 30
    scores = rng.normal(size=(N, L))
    scores[[3, 50], :] = np.nan  # skipped samples
    gen = np.random.default_rng(0)
    independent = set().union(*(choose(scores[:, j], k, rule, 1.0, gen) for j in range(L)))
    assert len(independent) > 2 * k
    subsets, union = layer_subsets(scores, k, rule, draw=np.random.default_rng(0))
    assert len(union) == k and len(set(union)) == k and not {3, 50} & set(union)
    assert set().union(*map(set, subsets)) == set(union)
    sizes = {len(s) for s in subsets}
    assert len(sizes) == 1 and sizes.pop() >= round(0.5 * k)
    assert all(len(set(s)) == len(s) for s in subsets)
    # a budget beyond the scorable samples takes them all
    _, everything = layer_subsets(scores, N, rule, draw=np.random.default_rng(0))
    assert sorted(everything) == sorted(set(range(N)) - {3, 50})
    with pytest.raises(ValueError, match="layer_share"):
        layer_subsets(scores, k, rule, layer_share=0.0)


def test_gast_without_targets_is_cross_fitted(tiny_lm, make_samples):
    pool = make_samples(10, seed=3)
    r = gast_select(tiny_lm, pool, None, budget=4, seed=2, holdout_fraction=0.4, n_folds=2)
    assert "cross-fitted over 2 folds" in r.support
    assert len(r.union) == 4
    # each sample's layer scores come from a support without its own gradient
    scope = gr.resolve_scope(tiny_lm.model)
    holdout = gr.holdout_slice(10, 0.4, 2)
    folds = gr.crossfit_folds(10, holdout, 2, 2)
    for fold in folds:
        others = [pool[i] for i in holdout if i not in fold]
        s, _ = gr.mean_gradient(tiny_lm, others, scope)
        _, exact = gr.exact_scores(tiny_lm, [pool[i] for i in fold], s, scope).per_layer()
        np.testing.assert_allclose(r.scores[fold], exact, rtol=1e-4,
                                   atol=1e-4 * np.abs(exact).max())


def test_batch_layer_picks_draw_only_scored_rows():
    """Per layer: round(share * scored rows of the batch) rows, never a row the layer did
    not score (NaN), drawn by softmax of the within-batch standardised scores."""
    from curator.selection.gast import batch_layer_picks

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 3))
    scores[[1, 4, 6], 0] = np.nan   # layer 0 scored 5 of the 8 rows
    scores[:, 2] = np.nan           # layer 2 scored none
    gen = np.random.default_rng(1)
    for _ in range(50):
        picks = batch_layer_picks(scores, 0.5, 1.0, gen)
        assert len(picks[0]) == round(0.5 * 5) and not {1, 4, 6} & set(picks[0])
        assert len(picks[1]) == 4 and len(set(picks[1])) == 4
        assert picks[2] == []
    # within-batch standardisation: a shift or scale of a layer's scores draws the same rows
    a = batch_layer_picks(scores[:, :2], 0.5, 1.0, np.random.default_rng(2))
    b = batch_layer_picks(3 * scores[:, :2] + 7, 0.5, 1.0, np.random.default_rng(2))
    assert a == b
    # a torch generator (curator.training.finetune's) comes wrapped: seeded, the same picks
    assert batch_layer_picks(scores, 0.5, 1.0, torch_uniforms(torch.Generator().manual_seed(2))) \
        == batch_layer_picks(scores, 0.5, 1.0, torch_uniforms(torch.Generator().manual_seed(2)))
    with pytest.raises(TypeError, match="torch_uniforms"):
        batch_layer_picks(scores, 0.5, 1.0, torch.Generator().manual_seed(2))
    # higher scores are drawn more often
    ladder = np.arange(10, dtype=float)[:, None]
    drawn = [i for _ in range(200)
             for i in batch_layer_picks(ladder, 0.2, 0.5, gen)[0]]
    assert np.mean(drawn) > 6
    with pytest.raises(ValueError, match="layer_share"):
        batch_layer_picks(scores, 0.0)
