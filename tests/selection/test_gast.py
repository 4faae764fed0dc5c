"""GAST: per-layer scores, the sampled and top-k rules, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring import gradients as gr
from curator.selection.gast import choose, gast_select


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river stone cloud seven apple quiet".split()
    return [Sample.from_pair(f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(1, 8)))),
                             " ".join(rng.choice(words, size=int(rng.integers(1, 10)))))
            for i in range(n)]


def test_choose_topk_and_nan():
    scores = np.array([0.1, 3.0, np.nan, 2.0, -1.0, 2.0])
    assert choose(scores, 3, "topk") == [1, 3, 5]
    assert choose(scores, 10, "topk") == [1, 3, 5, 0, 4]  # NaN never picked


def test_choose_sampling_is_seeded():
    scores = np.random.default_rng(0).normal(size=60)
    a = choose(scores, 10, "sample", 1.0, torch.Generator().manual_seed(3))
    b = choose(scores, 10, "sample", 1.0, torch.Generator().manual_seed(3))
    c = choose(scores, 10, "sample", 1.0, torch.Generator().manual_seed(4))
    assert a == b and a != c and len(set(a)) == 10
    # a vanishing temperature turns sampling into top-k
    cold = choose(scores, 10, "sample", 1e-6, torch.Generator().manual_seed(5))
    assert cold == choose(scores, 10, "topk")


def test_sampling_prefers_high_scores():
    scores = np.arange(100, dtype=float)
    gen = torch.Generator().manual_seed(0)
    picks = [i for _ in range(50) for i in choose(scores, 5, "sample", 0.5, gen)]
    assert np.mean(picks) > 75


def test_bad_rule_and_temperature():
    with pytest.raises(ValueError, match="rule"):
        choose(np.zeros(3), 1, "greedy")
    with pytest.raises(ValueError, match="temperature"):
        choose(np.zeros(3), 1, "sample", 0.0)


def test_gast_select_layers_scores_and_reproducibility(tiny_lm):
    pool, targets = make_samples(10), make_samples(3, seed=1)
    r = gast_select(tiny_lm, pool, targets, budget=4, seed=7)
    assert len(r.layers) == 2 and r.layers == list(r.layer_subsets)
    assert all(len(v) == 4 and len(set(v)) == 4 for v in r.layer_subsets.values())
    again = gast_select(tiny_lm, pool, targets, budget=4, seed=7)
    assert again.layer_subsets == r.layer_subsets
    # per-layer scores are <g_n^l, s^l> with s the mean target gradient
    scope = gr.resolve_scope(tiny_lm.model)
    s, _ = gr.mean_gradient(tiny_lm, targets, scope)
    _, exact = gr.exact_scores(tiny_lm, pool, s, scope).per_layer()
    np.testing.assert_allclose(r.scores, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    top = gast_select(tiny_lm, pool, targets, budget=4, rule="topk")
    for j, layer in enumerate(top.layers):
        assert top.layer_subsets[layer] == [int(i) for i in np.argsort(-exact[:, j],
                                                                       kind="stable")[:4]]
    ids = r.subsets_by_id(pool)
    assert all(len(v) == 4 for v in ids.values())


def test_gast_bad_input(tiny_llama):
    pool = make_samples(4)
    with pytest.raises(ValueError, match="target set is empty"):
        gast_select(tiny_llama, pool, [], budget=2)
    with pytest.raises(ValueError, match="budget"):
        gast_select(tiny_llama, pool, pool, budget=1.5)
    with pytest.raises(ValueError, match="rule"):
        gast_select(tiny_llama, pool, pool, budget=2, rule="best")
