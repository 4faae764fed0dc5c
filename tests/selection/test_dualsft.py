"""DualSFT: mask allocation rule, co-extraction, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring import gradients as gr
from curator.selection.dualsft import DualSFTConfig, allocate_mask, dualsft_select, resolve_count


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta river stone cloud seven apple quiet".split()
    return [Sample.from_pair(f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(1, 8)))),
                             " ".join(rng.choice(words, size=int(rng.integers(1, 10)))))
            for i in range(n)]


def fake_phi(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two layers x three kinds of different sizes; layer 1 has much larger scores, so a
    plain global top-k would starve layer 0."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer, scale in ((0, 1e-3), (1, 1.0)):
        for kind, shape in (("self_attn.q_proj", (8, 8)), ("self_attn.k_proj", (4, 8)),
                            ("mlp.up_proj", (16, 8))):
            out[f"model.layers.{layer}.{kind}.weight"] = scale * torch.randn(shape, generator=g)
    return out


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("spread", [0.0, 0.25, 1.0])
def test_mask_selects_exactly_the_budget(budget, spread):
    phi = fake_phi()
    N = sum(v.numel() for v in phi.values())
    mask = allocate_mask(phi, budget, spread)
    assert set(mask) == set(phi) and all(m.dtype == torch.bool for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == max(1, round(budget * N))


def test_spread_share_reaches_every_cell():
    phi = fake_phi()
    N = sum(v.numel() for v in phi.values())
    K = round(0.2 * N)
    starved = allocate_mask(phi, 0.2, spread=0.0)  # global top-k: layer 0 gets nothing
    assert all(int(m.sum()) == 0 for n, m in starved.items() if "layers.0" in n)
    spread = allocate_mask(phi, 0.2, spread=0.5)
    share = int(0.5 * K) // len(phi)  # six cells, each at least its even share
    for n, m in spread.items():
        assert int(m.sum()) >= min(share, m.numel()), n
        # within a cell the kept entries are that cell's largest |phi|
        if 0 < int(m.sum()) < m.numel():
            assert phi[n].abs()[m].min() >= phi[n].abs()[~m].max()


def test_spread_zero_is_global_top_k():
    phi = fake_phi(1)
    mask = allocate_mask(phi, 0.3, spread=0.0)
    flat = torch.cat([v.abs().reshape(-1) for v in phi.values()])
    kept = torch.cat([m.reshape(-1) for m in mask.values()])
    assert flat[kept].min() >= flat[~kept].max()


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, True])
def test_bad_parameter_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        allocate_mask(fake_phi(), budget)


def test_resolve_count():
    assert resolve_count(0.25, 10, "data") == 2  # round(2.5) -> 2 (banker's), never below 1
    assert resolve_count(0.01, 10, "data") == 1
    assert resolve_count(7, 10, "data") == 7
    assert resolve_count(1.0, 10, "data") == 10
    assert resolve_count(1, 10, "data") == 1  # an int is a count: one sample, not all
    assert resolve_count("30%", 10, "data") == 3
    for bad in (0, 11, 1.5, -1, "x", True):
        with pytest.raises(ValueError, match="budget"):
            resolve_count(bad, 10, "data")


def test_dualsft_select_mask_and_co_extracted_ranking(tiny_llama):
    pool, targets = make_samples(12), make_samples(3, seed=1)
    cfg = DualSFTConfig(eta=0.1, warmup_steps=2, warmup_fraction=0.25)
    r = dualsft_select(tiny_llama, pool, targets, param_budget=0.1, data_budget=4, config=cfg)
    scope = gr.resolve_scope(tiny_llama.model)
    params = gr.scope_parameters(tiny_llama.model, scope)
    assert set(r.mask) == set(params)
    N = sum(p.numel() for p in params.values())
    assert sum(int(m.sum()) for m in r.mask.values()) == round(0.1 * N)
    assert len(r.selected) == 4 and r.selected == r.ranking[:4]
    assert sorted(r.ranking) == list(range(12))
    assert np.all(np.diff(r.scores[r.ranking]) <= 0)
    assert "kl to reference" in r.stats.v_prior_source  # the warm-up makes the prior non-zero
    # phi_param = u * G, and the masked utilities sum the masked columns of M[n, p]
    assert not np.allclose(r.scores, r.scores_full)
    assert len(r.selected_ids(pool)) == 4


def test_co_extraction_equals_masked_direction(tiny_llama):
    pool, targets = make_samples(8, seed=2), make_samples(2, seed=3)
    cfg = DualSFTConfig(eta=0.1)
    r = dualsft_select(tiny_llama, pool, targets, param_budget=0.2, data_budget=0.5, config=cfg)
    u = gr.update_direction(r.stats, eta=0.1)
    for k in u:
        torch.testing.assert_close(r.phi_param[k], u[k] * r.stats.G[k])
    masked = {k: v * r.mask[k] for k, v in u.items()}
    exact = gr.exact_scores(tiny_llama, pool, masked)
    np.testing.assert_allclose(r.scores, exact.total, rtol=1e-4,
                               atol=1e-4 * np.abs(exact.total).max())
    no_co = dualsft_select(tiny_llama, pool, targets, param_budget=0.2, data_budget=0.5,
                           config=DualSFTConfig(eta=0.1, co_extract=False))
    np.testing.assert_allclose(no_co.scores, r.scores_full)


def test_dualsft_bad_input(tiny_llama):
    pool = make_samples(4)
    with pytest.raises(ValueError, match="target set is empty"):
        dualsft_select(tiny_llama, pool, [], param_budget=0.1, data_budget=2)
    with pytest.raises(ValueError, match="parameter budget"):
        dualsft_select(tiny_llama, pool, pool, param_budget=0.0, data_budget=2)
    with pytest.raises(ValueError, match="larger than"):
        dualsft_select(tiny_llama, pool, pool, param_budget=0.1, data_budget=9)
