"""Gradient statistics and hook-based per-sample scores against exact autograd."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from curator.records import Sample
from curator.scoring import gradients as gr
from curator.scoring.encoding import collate, encode
from curator.testing import tiny_loaded_model

# Longer prompts and responses than conftest's make_samples default, so batches carry more
# padding (tests/test_cuda.py reuses them).
SAMPLE_LENGTHS = {"prompt_words": (1, 9), "response_words": (1, 12)}


@pytest.fixture(scope="module")
def make_samples(make_samples):
    return functools.partial(make_samples, **SAMPLE_LENGTHS)


def random_direction(lm, scope, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) for n, p in
            gr.scope_parameters(lm.model, scope).items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_hook_scores_match_exact_per_sample_autograd(tiny_lm, make_samples):
    samples = make_samples(9)
    scope = gr.resolve_scope(tiny_lm.model)
    u = random_direction(tiny_lm, scope)
    hook = gr.hook_scores(tiny_lm, samples, u, scope, batch_size=4)  # padded batches
    exact = gr.exact_scores(tiny_lm, samples, u, scope)  # one unpadded sample at a time
    assert rel_err(hook.total, exact.total) < 1e-4
    assert rel_err(hook.per_module, exact.per_module) < 1e-4
    layers, per_layer = hook.per_layer()
    _, exact_layer = exact.per_layer()
    assert layers == sorted(layers, key=lambda s: int(s.rsplit(".", 1)[1]))
    assert rel_err(per_layer, exact_layer) < 1e-4
    np.testing.assert_allclose(per_layer.sum(1), hook.total, rtol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # both tie head and token embedding
def test_hook_scores_with_tied_head_and_embeddings(arch, make_samples):
    lm = tiny_loaded_model(arch)
    samples = make_samples(5, seed=1)
    scope = gr.resolve_scope(lm.model, include_head=True)
    names = [s.name for s in scope]
    # the head is tied to the token embedding, so asking for it brings both uses
    assert any(n.endswith(("embed_tokens", "wte")) for n in names) and "lm_head" in names
    u = random_direction(lm, scope, seed=3)
    hook = gr.hook_scores(lm, samples, u, scope, batch_size=3)
    exact = gr.exact_scores(lm, samples, u, scope)
    assert rel_err(hook.total, exact.total) < 1e-4


def test_scores_do_not_depend_on_batch_composition(tiny_llama, make_samples):
    samples = make_samples(7, seed=2)
    scope = gr.resolve_scope(tiny_llama.model)
    u = random_direction(tiny_llama, scope)
    a = gr.hook_scores(tiny_llama, samples, u, scope, batch_size=7).total
    b = gr.hook_scores(tiny_llama, samples, u, scope, batch_size=2).total
    assert rel_err(a, b) < 1e-5


def test_scope_options(tiny_llama):
    model = tiny_llama.model
    default = gr.resolve_scope(model)
    assert len(default) == 14 and all(s.kind == "linear" for s in default)
    assert all(s.layer != gr.OTHER_LAYER for s in default)
    last = gr.resolve_scope(model, last_layers=1)
    assert {s.layer for s in last} == {"model.layers.1"}
    mlp = gr.resolve_scope(model, modules=["*.mlp.*"])
    assert [gr.module_kind(s.name) for s in mlp[:3]] == ["mlp.gate_proj", "mlp.up_proj",
                                                          "mlp.down_proj"]
    with pytest.raises(ValueError, match="scope is empty"):
        gr.resolve_scope(model, modules=["nothing.*"])
    with pytest.raises(ValueError, match="last_layers"):
        gr.resolve_scope(model, last_layers=5)


def test_gpt2_conv1d_scope():
    lm = tiny_loaded_model("gpt2")
    scope = gr.resolve_scope(lm.model)
    assert {s.kind for s in scope} == {"conv1d"}
    assert gr.module_kind(scope[1].name) == "attn.c_proj"
    assert gr.module_kind(scope[3].name) == "mlp.c_proj"


def _manual_grad(lm, sample: Sample, params: dict[str, torch.nn.Parameter]):
    """Gradient of one sample's mean response loss, computed the plain way."""
    e = encode(lm.tokenizer, sample.prompt_messages, sample.response, 512)
    batch = collate([e], lm.tokenizer.pad_token_id)
    for p in lm.model.parameters():
        p.requires_grad_(True)
    lm.model.zero_grad(set_to_none=True)
    out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = F.cross_entropy(out.logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize("batch_size", [1, 100])
def test_first_and_second_order_direction_match_direct_computation(tiny_llama, batch_size,
                                                                   make_samples):
    lm = tiny_llama
    pool, targets = make_samples(6, seed=4), make_samples(3, seed=5)
    scope = gr.resolve_scope(lm.model)
    params = gr.scope_parameters(lm.model, scope)
    per_pool = [_manual_grad(lm, s, params) for s in pool]
    per_target = [_manual_grad(lm, s, params) for s in targets]
    v_new = {n: sum(g[n] for g in per_target) / 3 for n in params}
    G = {n: sum(g[n] for g in per_pool) for n in params}
    if batch_size == 1:  # each mini-batch is one sample
        c = {n: sum(g[n] ** 2 for g in per_pool) / 6 for n in params}
    else:  # one mini-batch holding the whole pool
        c = {n: (G[n] / 6) ** 2 for n in params}

    stats = gr.gradient_statistics(lm, pool, targets, batch_size=batch_size)
    assert stats.n_pool == 6 and stats.n_target == 3
    assert all(float(v.abs().max()) == 0.0 for v in stats.v_prior.values())
    eta = 0.5
    first = gr.update_direction(stats, eta=eta, second_order=False)
    second = gr.update_direction(stats, eta=eta, second_order=True)
    for n in params:
        torch.testing.assert_close(stats.G[n], G[n], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats.c[n], c[n], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(first[n], eta * v_new[n], rtol=1e-4, atol=1e-7)
        direct = eta * v_new[n] - 0.5 * eta**2 * c[n] * G[n]
        torch.testing.assert_close(second[n], direct, rtol=1e-4, atol=1e-7)


def test_v_prior_is_the_confidence_weighted_kl_gradient(tiny_llama, make_samples):
    lm = tiny_llama
    reference = copy.deepcopy(lm.model)
    with torch.no_grad():  # move the scored model away from the reference
        for p in lm.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    anchors = make_samples(3, seed=6)
    scope = gr.resolve_scope(lm.model)
    params = gr.scope_parameters(lm.model, scope)
    tau = 2.0
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    total_w = 0.0
    for s in anchors:  # direct: one anchor at a time, full vocabulary KL
        e = encode(lm.tokenizer, s.prompt_messages, s.response, 512)
        batch = collate([e], lm.tokenizer.pad_token_id)
        valid = batch["labels"][0, 1:].ne(-100)
        with torch.no_grad():
            q = F.softmax(reference(input_ids=batch["input_ids"]).logits[0, :-1] / tau, -1)
        lm.model.zero_grad(set_to_none=True)
        log_p = F.log_softmax(lm.model(input_ids=batch["input_ids"]).logits[0, :-1] / tau, -1)
        kl = (q * (q.log() - log_p)).sum(-1)[valid].mean()
        w = float(q.max(-1).values[valid].mean())
        (w * kl * tau**2).backward()
        for n, p in params.items():
            acc[n] += p.grad
        total_w += w
    got = gr.kl_prior_gradient(lm, reference, anchors, scope, tau=tau, batch_size=2)
    norm = sum(float(v.norm() ** 2) for v in got.values()) ** 0.5
    assert norm > 0
    for n in params:
        torch.testing.assert_close(got[n], acc[n] / total_w, rtol=1e-3, atol=1e-7)
    # at the reference itself the prior gradient vanishes
    same = gr.kl_prior_gradient(lm, lm.model, anchors, scope, tau=tau)
    assert max(float(v.abs().max()) for v in same.values()) < 1e-6


def test_holdout_slice_when_no_target_set(tiny_llama, make_samples):
    pool = make_samples(10, seed=7)
    stats = gr.gradient_statistics(tiny_llama, pool, None, holdout_fraction=0.3, seed=1)
    assert len(stats.holdout) == 3 and stats.n_target == 3
    again = gr.gradient_statistics(tiny_llama, pool, None, holdout_fraction=0.3, seed=1)
    assert again.holdout == stats.holdout


def test_bad_input_is_a_clear_value_error(tiny_llama, make_samples):
    pool = make_samples(3)
    with pytest.raises(ValueError, match="target set is empty"):
        gr.gradient_statistics(tiny_llama, pool, targets=[])
    with pytest.raises(ValueError, match="pool is empty"):
        gr.gradient_statistics(tiny_llama, [], targets=pool)
    with pytest.raises(ValueError, match="not weights of a linear"):
        gr.hook_scores(tiny_llama, pool, {"model.norm.weight": torch.ones(32)})


def test_sample_that_does_not_fit_is_skipped_not_scored(tiny_llama, make_samples):
    pool = make_samples(3) + [Sample.from_pair("hi", "x" * 200)]
    scope = gr.resolve_scope(tiny_llama.model)
    u = random_direction(tiny_llama, scope)
    s = gr.hook_scores(tiny_llama, pool, u, scope, max_length=64)
    assert s.skipped == [3] and np.isnan(s.total[3]) and not np.isnan(s.total[:3]).any()


@pytest.mark.slow
def test_hook_scores_match_exact_on_the_default_model(make_samples):
    from curator.models import load_model

    lm = load_model(None, device="cpu", dtype="fp32")
    samples = make_samples(4, seed=8)
    scope = gr.resolve_scope(lm.model, last_layers=4)
    u = random_direction(lm, scope)
    hook = gr.hook_scores(lm, samples, u, scope, batch_size=4)
    exact = gr.exact_scores(lm, samples, u, scope)
    assert rel_err(hook.total, exact.total) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_hook_scores_track_fp32_exact(arch, make_samples):
    """The CUDA/CPU bf16 path: projections in bf16, reductions in fp32."""
    lm16, lm32 = tiny_loaded_model(arch, dtype="bf16"), tiny_loaded_model(arch)
    samples = make_samples(8)
    scope = gr.resolve_scope(lm16.model)
    u = random_direction(lm16, scope)
    hook = gr.hook_scores(lm16, samples, u, scope, batch_size=4)
    exact = gr.exact_scores(lm32, samples, u)
    assert rel_err(hook.total, exact.total) < 2e-2
    stats = gr.gradient_statistics(lm16, samples, samples[:2], scope=scope)
    assert all(v.dtype == torch.float32 for v in stats.G.values())


class _MatmulLog(TorchDispatchMode):
    """Records the contracted (inner) dimension of every 2-D matmul."""

    def __init__(self):
        super().__init__()
        self.inner: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            a = args[0] if func is torch.ops.aten.mm.default else args[1]
            self.inner.append(int(a.shape[-1]))
        return func(*args, **(kwargs or {}))


def test_hook_path_forms_no_weight_gradient_and_matches_exact(tiny_lm, make_samples):
    """Only activation gradients: no matmul contracts over tokens (a weight gradient
    dW = delta^T a does), no parameter gets a .grad, and the requires_grad flags come back.
    The exact per-sample path, which does form dW, is the positive control."""
    lm = tiny_lm
    samples = make_samples(7, seed=9)
    scope = gr.resolve_scope(lm.model)
    u = random_direction(lm, scope, seed=4)
    flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    # every dimension a linear layer, the head or the embedding has: activation matmuls
    # (forward, backward to the inputs, and the hooks' projections) contract over these
    model_dims = {d for p in lm.model.parameters() if p.dim() == 2 for d in p.shape}
    hook_log = _MatmulLog()
    with hook_log:
        hook = gr.hook_scores(lm, samples, u, scope, batch_size=3)
    assert hook_log.inner and set(hook_log.inner) <= model_dims
    assert all(p.grad is None for p in lm.model.parameters())
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == flags
    exact_log = _MatmulLog()
    with exact_log:
        exact = gr.exact_scores(lm, samples, u, scope)
    assert set(exact_log.inner) - model_dims  # dW matmuls contract over each sample's tokens
    assert rel_err(hook.total, exact.total) < 1e-5
    assert rel_err(hook.per_module, exact.per_module) < 1e-5


def test_response_losses_equal_full_logit_losses(tiny_lm, make_samples):
    """The head on response positions only (and the short-row attention on CPU) gives
    the same per-sample losses as full logits through the model's own attention."""
    lm = tiny_lm
    encoded = gr.encode_samples(lm.tokenizer, make_samples(5, seed=10), 512)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return gr._short_row_attention(*args, **kwargs)

    assert gr._register_short_row_attention()
    from transformers import AttentionInterface

    AttentionInterface.register(gr._SHORT_ROW_ATTENTION, spy)
    try:
        for rows in (encoded, encoded[:1]):  # padded batch; one row, no mask (causal)
            batch = collate(rows, lm.tokenizer.pad_token_id)
            with torch.no_grad():
                fast = gr.response_losses(lm.model, batch)
                full = gr.batch_losses(lm.model, batch)
            torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    finally:
        AttentionInterface.register(gr._SHORT_ROW_ATTENTION, gr._short_row_attention)
    assert calls  # the short-row attention ran
    assert lm.model.config._attn_implementation == "sdpa"  # restored after the pass


@pytest.mark.parametrize("masked", [False, True])
def test_short_row_attention_matches_sdpa_with_grouped_heads(masked):
    torch.manual_seed(0)
    B, H, Hkv, T, D = 3, 6, 2, 7, 8
    q = torch.randn(B, H, T, D, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, requires_grad=True)
    mask = None
    if masked:  # right padding: the last row has 3 real tokens
        keys = torch.ones(B, T, dtype=torch.bool)
        keys[-1, 3:] = False
        mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & keys[:, None, None, :]
    module = torch.nn.Module()
    got, _ = gr._short_row_attention(module, q, k, v, mask, scaling=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                         scale=0.3, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(got, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_short_row_attention_stays_fp32_under_bf16_autocast():
    # A bug fix: under CPU bf16 autocast (training over fp32 weights) its matmuls ran in
    # bf16 and the fp32 mask fill overflowed ("cannot be converted to BFloat16").
    torch.manual_seed(0)
    B, H, Hkv, T, D = 2, 4, 2, 5, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    keys = torch.ones(B, T, dtype=torch.bool)
    keys[-1, 3:] = False
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & keys[:, None, None, :]
    module = torch.nn.Module()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = gr._short_row_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = gr._short_row_attention(module, q, k, v, mask, scaling=0.3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_hook_scores_gather_real_tokens_when_padding_is_large(tiny_llama, monkeypatch,
                                                             make_samples):
    """Padding-heavy batches take the gathered-token contraction; same scores."""
    samples = make_samples(6, seed=11) + [Sample.from_pair("long " * 30, "answer " * 10)]
    scope = gr.resolve_scope(tiny_llama.model)
    u = random_direction(tiny_llama, scope, seed=5)
    monkeypatch.setattr(gr.hooks, "GATHER_PADDING_FRACTION", 1.0)  # never gather
    dense = gr.hook_scores(tiny_llama, samples, u, scope, batch_size=7)
    monkeypatch.setattr(gr.hooks, "GATHER_PADDING_FRACTION", 0.0)  # always gather
    gathered = gr.hook_scores(tiny_llama, samples, u, scope, batch_size=7)
    exact = gr.exact_scores(tiny_llama, samples, u, scope)
    assert rel_err(gathered.per_module, dense.per_module) < 1e-5
    assert rel_err(gathered.total, exact.total) < 1e-5


def test_padding_aware_batches_cover_every_sample_once_with_less_padding():
    from curator.scoring.encoding import length_batches

    rng = np.random.default_rng(12)
    lengths = [int(x) for x in rng.integers(20, 200, size=101)] + [500]
    batches = gr.padding_aware_batches(lengths, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert batches[0] == [101]  # the outlier alone, longest first
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)

    def cost(bs):
        return sum(len(b) * max(lengths[i] for i in b) + gr.BATCH_OVERHEAD_TOKENS for b in bs)

    assert cost(batches) <= cost(length_batches(lengths, 16))
    assert gr.padding_aware_batches([], 4) == []
