"""DualSFT: mask allocation rule, co-extraction, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.scoring import gradients as gr
from curator.selection.dualsft import allocate_mask as allocate_array_mask
from curator.selection.dualsft import resolve_count, top_k
from curator.stages.gradient_passes import DualSFTConfig, dualsft_select, parameter_mask


def allocate_mask(phi, budget, spread=0.0, use_abs=False):
    """The numpy rule over tensors, its cells (layer, module kind) as the stages name them;
    bool tensors back, as the stages store them."""
    arrays = {k: v.numpy() for k, v in phi.items()}
    mask = allocate_array_mask(arrays, budget, spread, use_abs,
                               cell_of=lambda n: (gr.layer_of(n), gr.module_kind(n)))
    got = {k: torch.from_numpy(m) for k, m in mask.items()}
    staged = parameter_mask(phi, budget, spread, use_abs)  # what dualsft_select calls
    assert all(torch.equal(staged[k], got[k]) for k in got)
    return got


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
    starved = allocate_mask(phi, 0.2, spread=0.0, use_abs=True)  # layer 0 gets nothing
    assert all(int(m.sum()) == 0 for n, m in starved.items() if "layers.0" in n)
    spread = allocate_mask(phi, 0.2, spread=0.5, use_abs=True)
    share = int(0.5 * K) // len(phi)  # six cells, each at least its even share
    for n, m in spread.items():
        assert int(m.sum()) >= min(share, m.numel()), n
        # within a cell the kept entries are that cell's largest |phi|
        if 0 < int(m.sum()) < m.numel():
            assert phi[n].abs()[m].min() >= phi[n].abs()[~m].max()


def test_spread_zero_is_global_top_k():
    phi = fake_phi(1)
    mask = allocate_mask(phi, 0.3, spread=0.0, use_abs=True)
    flat = torch.cat([v.abs().reshape(-1) for v in phi.values()])
    kept = torch.cat([m.reshape(-1) for m in mask.values()])
    assert flat[kept].min() >= flat[~kept].max()


def test_mask_ranks_signed_phi_by_default():
    """phi < 0 predicts a higher validation loss: -10 must not beat +5 (the reference's
    default rule; |phi| is an option)."""
    phi = {"model.layers.0.mlp.up_proj.weight": torch.tensor([[-10.0, 5.0, 1.0, -0.5]]),
           "model.layers.1.mlp.up_proj.weight": torch.tensor([[2.0, -3.0, 0.25, 0.0]])}
    mask = allocate_mask(phi, 2 / 8)
    assert mask["model.layers.0.mlp.up_proj.weight"].tolist() == [[False, True, False, False]]
    assert mask["model.layers.1.mlp.up_proj.weight"].tolist() == [[True, False, False, False]]
    by_abs = allocate_mask(phi, 2 / 8, use_abs=True)
    assert by_abs["model.layers.0.mlp.up_proj.weight"].tolist() == [[True, True, False, False]]
    assert not by_abs["model.layers.1.mlp.up_proj.weight"].any()
    # signed ranking keeps the order of tiny values next to a large negative one
    tiny = {"model.layers.0.mlp.up_proj.weight": torch.tensor([[-1e3, 3e-12, 2e-12, 1e-12]])}
    assert allocate_mask(tiny, 1 / 4)["model.layers.0.mlp.up_proj.weight"].tolist() == \
        [[False, True, False, False]]


def test_defaults_follow_the_reference_signed_and_no_spread():
    cfg = DualSFTConfig()
    assert cfg.use_abs is False and cfg.spread == 0.0
    # default allocation is the plain signed global top-k: layer 0 (small scores) starves
    phi = {k: v.abs() for k, v in fake_phi().items()}
    mask = allocate_mask(phi, 0.2)
    assert all(int(m.sum()) == 0 for n, m in mask.items() if "layers.0" in n)


def test_top_k_takes_the_largest_and_the_lowest_indices_among_ties():
    x = np.array([3.0, 1.0, 2.0, 2.0, 2.0, -1.0])
    assert sorted(top_k(x, 1)) == [0]
    assert sorted(top_k(x, 3)) == [0, 2, 3]
    assert sorted(top_k(x, 6)) == list(range(6)) and len(top_k(x, 0)) == 0
    rng = np.random.default_rng(0)
    y = rng.normal(size=1000).astype(np.float32)
    assert sorted(top_k(y, 37)) == sorted(np.argsort(-y, kind="stable")[:37])


def test_cells_default_to_one_per_parameter():
    phi = {"a": np.array([5.0, 4.0, 3.0]), "b": np.array([0.1, 0.2, 0.3])}
    assert allocate_array_mask(phi, 2 / 6)["b"].sum() == 0  # plain global top-k
    mask = allocate_array_mask(phi, 2 / 6, spread=1.0)      # one each
    assert mask["a"].tolist() == [True, False, False]
    assert mask["b"].tolist() == [False, False, True]


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


def test_dualsft_select_mask_and_co_extracted_ranking(tiny_llama, make_samples):
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
    assert sum(float(v.norm()) for v in r.stats.v_prior.values()) > 0
    # phi_param = u * G, and the masked utilities sum the masked columns of M[n, p]
    assert not np.allclose(r.scores, r.scores_full)
    assert len(r.selected_ids(pool)) == 4


def test_co_extraction_equals_masked_direction(tiny_llama, make_samples):
    pool, targets = make_samples(8, seed=2), make_samples(2, seed=3)
    cfg = DualSFTConfig(eta=0.1, warmup_steps=0)  # exact scores below: at the model itself
    r = dualsft_select(tiny_llama, pool, targets, param_budget=0.2, data_budget=0.5, config=cfg)
    u = gr.update_direction(r.stats, eta=0.1)
    for k in u:
        torch.testing.assert_close(r.phi_param[k], u[k] * r.stats.G[k])
    masked = {k: v * r.mask[k] for k, v in u.items()}
    exact = gr.exact_scores(tiny_llama, pool, masked)
    np.testing.assert_allclose(r.scores, exact.total, rtol=1e-4,
                               atol=1e-4 * np.abs(exact.total).max())
    no_co = dualsft_select(tiny_llama, pool, targets, param_budget=0.2, data_budget=0.5,
                           config=DualSFTConfig(eta=0.1, co_extract=False, warmup_steps=0))
    np.testing.assert_allclose(no_co.scores, r.scores_full)


def test_dualsft_bad_input(tiny_llama, make_samples):
    pool = make_samples(4)
    with pytest.raises(ValueError, match="target set is empty"):
        dualsft_select(tiny_llama, pool, [], param_budget=0.1, data_budget=2)
    with pytest.raises(ValueError, match="parameter budget"):
        dualsft_select(tiny_llama, pool, pool, param_budget=0.0, data_budget=2)
    with pytest.raises(ValueError, match="larger than"):
        dualsft_select(tiny_llama, pool, pool, param_budget=0.1, data_budget=9)


def test_prior_is_zero_without_warm_up_and_non_zero_after(tiny_llama, make_samples):
    pool, targets = make_samples(8, seed=4), make_samples(2, seed=5)
    cold = dualsft_select(tiny_llama, pool, targets, param_budget=0.1, data_budget=2,
                          config=DualSFTConfig(eta=1e-2, warmup_steps=0))
    assert all(float(v.abs().max()) == 0.0 for v in cold.stats.v_prior.values())
    assert cold.stats.v_prior_source.startswith("zero")
    warm = dualsft_select(tiny_llama, pool, targets, param_budget=0.1, data_budget=2,
                          config=DualSFTConfig(eta=1e-2, warmup_steps=3, warmup_fraction=0.5))
    norm = sum(float(v.norm()) ** 2 for v in warm.stats.v_prior.values()) ** 0.5
    assert norm > 1e-6
    # lambda_prior now moves the direction: u differs with and without the prior
    u1 = gr.update_direction(warm.stats, eta=1e-2, lambda_prior=1.0)
    u0 = gr.update_direction(warm.stats, eta=1e-2, lambda_prior=0.0)
    assert any(not torch.allclose(u1[k], u0[k]) for k in u1)


def test_no_target_set_scores_each_fold_against_the_other_folds(tiny_llama, make_samples):
    """DualSFT without targets: sample n of fold k gets <u_k, g_n>, u_k built from the
    held-out samples outside fold k (exact per-sample gradients as the reference)."""
    pool = make_samples(10, seed=6)
    cfg = DualSFTConfig(eta=0.1, holdout_fraction=0.4, crossfit_folds=2, co_extract=False,
                        warmup_steps=0)
    r = dualsft_select(tiny_llama, pool, None, param_budget=0.1, data_budget=3, config=cfg)
    assert len(r.stats.folds) == 2 and len(r.stats.holdout) == 4
    for fold, v in zip(r.stats.folds, r.stats.v_new_folds, strict=True):
        u = gr.update_direction(r.stats, eta=0.1, v_new=v)
        exact = gr.exact_scores(tiny_llama, [pool[i] for i in fold], u)
        np.testing.assert_allclose(r.scores_full[fold], exact.total, rtol=1e-4,
                                   atol=1e-4 * np.abs(exact.total).max())
    np.testing.assert_allclose(r.scores, r.scores_full)


def test_warm_up_is_on_by_default_and_the_prior_is_not_zero(tiny_llama, make_samples):
    """As the reference: with default settings the scored model is a warmed-up copy and
    v_prior (KL to the frozen original on anchors) is non-zero, so lambda_prior matters."""
    from curator.config import GradientOptions, ScoringOptions, StageSpec
    from curator.stages.gradient import _dualsft_config

    cfg = _dualsft_config(StageSpec(method="dualsft"), ScoringOptions())
    assert cfg.warmup_steps == GradientOptions().warmup_steps == DualSFTConfig().warmup_steps > 0
    pool = make_samples(12, seed=11)
    r = dualsft_select(tiny_llama, pool, None, param_budget=0.1, data_budget=3)
    assert r.stats.v_prior_source.startswith("kl to reference")
    assert max(float(v.abs().max()) for v in r.stats.v_prior.values()) > 0
    u1 = gr.update_direction(r.stats, lambda_prior=1.0)
    u0 = gr.update_direction(r.stats, lambda_prior=0.0)
    assert any(not torch.equal(u1[k], u0[k]) for k in u1)


def test_each_fold_is_scored_on_its_own_mask(tiny_llama, make_samples):
    """No target set, co-extraction: fold k's samples are scored on u_k masked by the mask
    allocated from u_k * G, u_k the mean exact gradient of the held-out samples OUTSIDE
    fold k: a held-out sample's gradient never chooses the coordinates of its own score.
    (The old code masked every fold with the whole slice's mask.)"""
    from curator.stages.gradient_passes import fold_masks

    pool = make_samples(12, seed=8)
    cfg = DualSFTConfig(eta=0.1, holdout_fraction=0.5, crossfit_folds=3, warmup_steps=0)
    r = dualsft_select(tiny_llama, pool, None, param_budget=0.05, data_budget=3, config=cfg)
    st = r.stats
    scope = gr.resolve_scope(tiny_llama.model)
    grads = list(gr.per_sample_gradients(tiny_llama, pool, scope))
    hold = set(st.holdout)
    whole = {k: v * 0 for k, v in grads[0].items()}
    for h in hold:
        for k in whole:
            whole[k] += grads[h][k] / len(hold)
    differs = False
    for fold in st.folds:
        others = [h for h in hold if h not in fold]
        v = {k: sum(grads[h][k] for h in others) / len(others) for k in grads[0]}
        u = gr.update_direction(st, eta=0.1, v_new=v)
        (mask,) = fold_masks([u], st.G, 0.05)
        own = [h for h in fold if h in hold]
        # the direction the fold's mask comes from holds none of its held-out gradients
        for h in own:
            assert h not in others
        masked = {k: t * mask[k] for k, t in u.items()}
        exact = gr.exact_scores(tiny_llama, [pool[i] for i in fold], masked)
        np.testing.assert_allclose(r.scores[fold], exact.total, rtol=1e-3,
                                   atol=1e-3 * np.abs(exact.total).max())
        u_whole = gr.update_direction(st, eta=0.1, v_new=whole)
        (global_mask,) = fold_masks([u_whole], st.G, 0.05)
        differs |= any(not torch.equal(mask[k], global_mask[k]) for k in mask)
    assert differs  # the per-fold masks are not the whole slice's mask


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_gradient_norms_equal_per_sample_gradients(arch, make_samples):
    """hook_scores(norms=True): |g_n| from the batched pass equals the norm of each sample's
    own autograd gradient (padded and gathered batches; Conv1D with biases; for the untied
    Qwen2 also the head on gathered rows and the token embedding)."""
    from curator.testing import tiny_loaded_model

    lm = tiny_loaded_model(arch)
    pool = make_samples(9, seed=12)
    untied = arch == "qwen2"
    scope = gr.resolve_scope(lm.model, include_head=untied, include_embeddings=untied)
    u = {k: torch.randn_like(v) for k, v in gr.scope_parameters(lm.model, scope).items()}
    got = gr.hook_scores(lm, pool, u, scope, batch_size=4, norms=True)
    want = [sum(float(t.pow(2).sum()) for t in g.values()) ** 0.5
            for g in gr.per_sample_gradients(lm, pool, scope)]
    np.testing.assert_allclose(got.norms, want, rtol=1e-4)
    np.testing.assert_allclose(got.total, gr.exact_scores(lm, pool, u, scope).total,
                               rtol=1e-4, atol=1e-5)


def test_unit_normalised_utilities_equal_the_per_sample_computation(tiny_llama, make_samples):
    """normalize="unit": the data utilities are <u, g_n> / |g_n| with g_n each sample's own
    gradient (target set, and cross-fitted without one); the mask does not change."""
    from curator.stages.gradient_passes import apply_mask_to

    pool, targets = make_samples(10, seed=13), make_samples(3, seed=14)
    scope = gr.resolve_scope(tiny_llama.model)
    grads = list(gr.per_sample_gradients(tiny_llama, pool, scope))
    norms = np.array([sum(float(t.pow(2).sum()) for t in g.values()) ** 0.5 for g in grads])
    for tgt in (targets, None):
        base = dict(eta=0.1, warmup_steps=0, holdout_fraction=0.4, crossfit_folds=2)
        plain = dualsft_select(tiny_llama, pool, tgt, param_budget=0.1, data_budget=3,
                               config=DualSFTConfig(**base))
        unit = dualsft_select(tiny_llama, pool, tgt, param_budget=0.1, data_budget=3,
                              config=DualSFTConfig(**base, normalize="unit"))
        assert all(torch.equal(unit.mask[k], plain.mask[k]) for k in plain.mask)
        np.testing.assert_allclose(unit.norms, norms, rtol=1e-4)
        np.testing.assert_allclose(unit.scores, plain.scores / norms, rtol=1e-4,
                                   atol=1e-6 * np.abs(plain.scores / norms).max())
        np.testing.assert_allclose(unit.scores_full, plain.scores_full / norms, rtol=1e-4)
        if tgt is not None:  # one direction: check against the per-sample dot products
            u = gr.update_direction(unit.stats, eta=0.1)
            d = apply_mask_to(u, unit.mask)
            want = [sum(float((d[k] * g[k]).sum()) for k in d) / n
                    for g, n in zip(grads, norms, strict=True)]
            np.testing.assert_allclose(unit.scores, want, rtol=1e-3,
                                       atol=1e-3 * np.abs(want).max())
    with pytest.raises(ValueError, match="normalize"):
        dualsft_select(tiny_llama, pool, targets, param_budget=0.1, data_budget=3,
                       config=DualSFTConfig(normalize="l2"))


def test_warm_up_of_a_bf16_model_moves_every_weight_in_fp32(make_samples):
    """An AdamW step at a fine-tuning learning rate is below bf16's resolution: in bf16 only
    about 30% of a tiny model's weights moved. The warmed copy is trained and scored in fp32,
    the bf16 original stays the (unchanged) reference, and v_prior is non-zero."""
    from curator.testing import tiny_loaded_model

    lm = tiny_loaded_model("llama", hidden=64)
    lm.model.to(torch.bfloat16)
    lm.dtype = torch.bfloat16
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    pool = make_samples(20, seed=15)
    warm = gr.warmup_copy(lm, pool[:5], steps=10, lr=2e-5)
    assert warm.dtype == torch.float32
    moved = [float((p.float() != q).float().mean())
             for p, q in zip(lm.model.parameters(), warm.model.parameters(), strict=True)]
    assert min(moved) > 0.9  # every tensor, nearly every coordinate
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    r = dualsft_select(lm, pool, None, param_budget=0.1, data_budget=3)
    assert max(float(v.abs().max()) for v in r.stats.v_prior.values()) > 0
    assert np.isfinite(r.scores).all()
