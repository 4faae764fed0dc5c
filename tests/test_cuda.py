"""The CUDA path against the CPU references: utility engine, hook gradient scores, masked
training and lazy facility location.

Every test here is marked `cuda` and runs on the `cuda_device` fixture's device: CUDA by
default (skipped where there is none, see tests/conftest.py), or whatever
CURATOR_CUDA_TEST_DEVICE names. ``CURATOR_CUDA_TEST_DEVICE=cpu pytest -m cuda
tests/test_cuda.py`` runs the same bodies on the CPU, a dry run before GPU time is spent.

The references are the ones the CPU tests use (the one-pair-per-forward utility oracle,
exact per-sample autograd), with their tolerances; the helpers are loaded from those test
files and tests/conftest.py, so the inputs are the same too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from curator.models import LoadedModel, wrap_model
from curator.scoring import gradients as gr
from curator.scoring.kernels import dense, utility_kernel
from curator.scoring.neighbours import dense_pairs
from curator.scoring.utility import PairChunk, UtilityConfig, score_pairs, score_pairs_reference
from curator.selection import select
from curator.testing import tiny_causal_lm, tiny_loaded_model, tiny_tokenizer
from curator.training.finetune import train

pytestmark = pytest.mark.cuda

HERE = Path(__file__).resolve().parent


def _sibling(relative: str) -> ModuleType:
    """Another test module, loaded by path (tests/ is no package; this works however
    pytest was started)."""
    path = HERE / relative
    name = "_cuda_ref_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONF = _sibling("conftest.py")  # make_samples, chat_samples, peaky
T_GRAD = _sibling("scoring/test_gradients.py")
T_TRAIN = _sibling("training/test_finetune.py")


def tiny_on(arch: str, device: torch.device, dtype: str = "fp32", peaky: bool = False,
            seed: int = 0) -> LoadedModel:
    """The tiny test model (same weights as curator.testing.tiny_loaded_model) on a device."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(arch, vocab_size=len(tok), seed=seed)
    lm = wrap_model(model, tok, name=f"tiny-{arch}-{seed}", device=device, dtype=dtype)
    assert lm.device.type == device.type and next(lm.model.parameters()).device.type == device.type
    return CONF.peaky(lm) if peaky else lm


def _engine(lm: LoadedModel, samples, pairs, cfg) -> dict:
    # Small batches and chunks, as the CPU equality test: several prefixes per batch.
    return PairChunk.concat(list(score_pairs(lm, samples, pairs, cfg, batch_size=4,
                                             chunk_pairs=9))).as_dict()


# ---- utility engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def util_samples():
    return {s.sample_id: s for s in CONF.chat_samples(7)}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_fp32_engine_on_device_equals_cpu_reference(arch, cuda_device, util_samples):
    """fp32 on the device: the cached, batched engine is the CPU oracle's computation."""
    pairs = dense_pairs(list(util_samples))
    cfg = UtilityConfig(distance="nll")
    truth = score_pairs_reference(CONF.peaky(tiny_loaded_model(arch)), util_samples, pairs, cfg)
    assert truth.valid.all() and np.abs(truth.utility).mean() > 1e-3  # not vacuous
    got = _engine(tiny_on(arch, cuda_device, peaky=True), util_samples, pairs, cfg)
    assert sorted(got) == sorted(pairs)
    for p, u in truth.as_dict().items():
        # 1e-4: the fp32 tolerance of the default-model test (kernels round differently)
        assert got[p] == pytest.approx(u, abs=1e-4), p


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_bf16_engine_on_device_tracks_fp32_cpu(arch, cuda_device, util_samples):
    """bf16 on the device against fp32 on the CPU for the same pairs, by the CPU bf16
    test's rule: no further from fp32 than twice the bf16 oracle's own error, plus a slack.
    That test's slack is 0.01 for the default model's utilities; a tiny model's are 0.003
    to 0.1 (nll; prob-l2 utilities of a random model are ~0, so it is left to the default
    model test below), where 0.01 would pass anything, so here it is 1% of their mean."""
    pairs = dense_pairs(list(util_samples))
    cfg = UtilityConfig(distance="nll")
    truth = score_pairs_reference(CONF.peaky(tiny_loaded_model(arch)), util_samples, pairs,
                                  cfg).as_dict()
    scale = float(np.mean([abs(u) for u in truth.values()]))
    assert scale > 1e-3  # not vacuous
    lm16 = tiny_on(arch, cuda_device, dtype="bf16", peaky=True)
    assert lm16.dtype == torch.bfloat16
    got16 = _engine(lm16, util_samples, pairs, cfg)
    ref16 = score_pairs_reference(lm16, util_samples, pairs, cfg).as_dict()
    err = np.mean([abs(got16[p] - truth[p]) for p in pairs])
    err_ref = np.mean([abs(ref16[p] - truth[p]) for p in pairs])
    assert err_ref > 0  # bf16 really ran
    assert err <= 2 * err_ref + 0.01 * scale, (err, err_ref, scale)


def _default_model_or_skip(**kw) -> LoadedModel:
    from curator.models import ModelLoadError, load_model

    try:
        return load_model(None, **kw)
    except ModelLoadError as exc:  # not installed (gpu_check.sh converts it when carried)
        pytest.skip(str(exc))


@pytest.mark.slow
def test_default_model_bf16_on_device_tracks_fp32_cpu(cuda_device):
    """The slow CPU test's bf16 check, with the bf16 model on the device."""
    from curator.records import Sample

    s = [Sample.from_pair("What is the capital of France?", "Paris is the capital of France."),
         Sample.from_pair("Name a primary colour.", "Red is a primary colour."),
         Sample.from_pair("What is 2 + 3?", "2 + 3 = 5."),
         Sample.from_pair("Translate 'bonjour' to English.", "Hello.")]
    by = {x.sample_id: x for x in s}
    pairs = dense_pairs(list(by))
    lm32 = _default_model_or_skip(device="cpu", dtype="fp32")
    lm16 = _default_model_or_skip(device=cuda_device, dtype="bf16")
    for distance in ("prob-l2", "nll"):
        cfg = UtilityConfig(distance=distance)
        truth = score_pairs_reference(lm32, by, pairs, cfg).as_dict()
        got16 = PairChunk.concat(list(score_pairs(lm16, by, pairs, cfg, batch_size=4))).as_dict()
        ref16 = score_pairs_reference(lm16, by, pairs, cfg).as_dict()
        err = np.mean([abs(got16[p] - truth[p]) for p in pairs])
        err_ref = np.mean([abs(ref16[p] - truth[p]) for p in pairs])
        assert err <= 2 * err_ref + 0.01, (distance, err, err_ref)


# ---- gradient scores --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_hook_scores_on_device_match_exact_autograd(arch, cuda_device):
    """Padded batches through the hooks against one backward per sample, both on the
    device, and against the CPU's exact scores (same weights, same u)."""
    samples = CONF.make_samples(9, **T_GRAD.SAMPLE_LENGTHS)
    lm = tiny_on(arch, cuda_device)
    scope = gr.resolve_scope(lm.model)
    u = T_GRAD.random_direction(lm, scope)  # CPU tensors: the hooks move them
    hook = gr.hook_scores(lm, samples, u, scope, batch_size=4)
    exact = gr.exact_scores(lm, samples, u, scope)
    assert T_GRAD.rel_err(hook.total, exact.total) < 1e-4
    assert T_GRAD.rel_err(hook.per_module, exact.per_module) < 1e-4
    cpu = tiny_loaded_model(arch)
    exact_cpu = gr.exact_scores(cpu, samples, u, gr.resolve_scope(cpu.model))
    assert T_GRAD.rel_err(hook.total, exact_cpu.total) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_hook_scores_on_device_track_fp32_cpu_exact(arch, cuda_device):
    """The CPU bf16 test's bound (2e-2), with the bf16 hooks on the device."""
    lm16 = tiny_on(arch, cuda_device, dtype="bf16")
    lm32 = tiny_loaded_model(arch)
    samples = CONF.make_samples(8, **T_GRAD.SAMPLE_LENGTHS)
    scope = gr.resolve_scope(lm16.model)
    u = T_GRAD.random_direction(lm16, scope)
    hook = gr.hook_scores(lm16, samples, u, scope, batch_size=4)
    exact = gr.exact_scores(lm32, samples, u)
    assert T_GRAD.rel_err(hook.total, exact.total) < 2e-2
    stats = gr.gradient_statistics(lm16, samples, samples[:2], scope=scope)
    assert all(v.dtype == torch.float32 and v.device.type == cuda_device.type
               for v in stats.G.values())


@pytest.mark.slow
def test_default_model_hook_scores_on_device_match_exact(cuda_device):
    lm = _default_model_or_skip(device=cuda_device, dtype="fp32")
    samples = CONF.make_samples(4, seed=8, **T_GRAD.SAMPLE_LENGTHS)
    scope = gr.resolve_scope(lm.model, last_layers=4)
    u = T_GRAD.random_direction(lm, scope)
    hook = gr.hook_scores(lm, samples, u, scope, batch_size=4)
    exact = gr.exact_scores(lm, samples, u, scope)
    assert T_GRAD.rel_err(hook.total, exact.total) < 1e-4


# ---- masked training --------------------------------------------------------------------------


def _gpt2_mask(model) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()
            if n.startswith("transformer.h.0.attn") and n.endswith("weight")}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_masked_training_on_device_keeps_masked_coordinates_bit_identical(arch, dtype,
                                                                          cuda_device):
    lm = tiny_on(arch, cuda_device, dtype=dtype)
    model = lm.model
    mask = T_TRAIN.partial_mask(model) or _gpt2_mask(model)  # CPU masks: train moves them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(lm, None, CONF.make_samples(6), mask=mask, steps=3, lr=1e-2, batch_size=3,
                weight_decay=0.1)
    assert res.steps == 3
    after = model.state_dict()
    for name, _ in model.named_parameters():
        assert after[name].device.type == cuda_device.type
        if name in mask:
            m = mask[name].to(after[name].device)
            assert torch.equal(after[name][~m], before[name][~m]), name
            assert not torch.equal(after[name][m], before[name][m]), name
        else:
            assert torch.equal(after[name], before[name]), name
    assert all(p.requires_grad for p in model.parameters())


# ---- lazy facility location on device-scored utilities ----------------------------------------


def _greedy_fl_margins(s: np.ndarray, budget: int) -> tuple[list[int], list[float]]:
    """Plain numpy greedy facility location: the ranking, and at each pick the gap between
    the best and the second-best gain (how far from a tie that pick was)."""
    cover = np.zeros(s.shape[0])
    picks: list[int] = []
    margins: list[float] = []
    for _ in range(budget):
        gains = np.maximum(s - cover[:, None], 0).sum(0)
        gains[picks] = -np.inf
        order = np.argsort(-gains, kind="stable")
        picks.append(int(order[0]))
        margins.append(float(gains[order[0]] - gains[order[1]]))
        cover = np.maximum(cover, s[:, order[0]])
    return picks, margins


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])  # their tiny utilities are the largest
def test_lazy_facility_location_unchanged_on_device_scores(arch, cuda_device):
    """Utilities scored in fp32 on the device give the CPU oracle's kernel up to rounding,
    so lazy FL picks the same ranking with the same gains. The budget is the number of
    leading picks that are no near-tie on the CPU kernel (a peaky tiny model's kernel
    saturates after a few picks, then all gains are 0 and any order is right), checked
    against a plain numpy greedy."""
    samples = {s.sample_id: s for s in CONF.chat_samples(10)}
    ids = sorted(samples)
    pairs = dense_pairs(ids)
    cfg = UtilityConfig(distance="nll")
    truth = score_pairs_reference(CONF.peaky(tiny_loaded_model(arch)), samples, pairs, cfg)
    got = PairChunk.concat(list(score_pairs(tiny_on(arch, cuda_device, peaky=True), samples,
                                            pairs, cfg, batch_size=4)))

    def kernel(chunk: PairChunk):
        return utility_kernel(chunk.target_id, chunk.example_id, chunk.utility, chunk.valid,
                              row_ids=ids, col_ids=ids)

    k_cpu, k_dev = kernel(truth), kernel(got)
    # the fp32 engine test's 1e-4 on utilities, in kernel units (utilities / scale)
    atol = 1e-4 / k_cpu.scale
    np.testing.assert_allclose(dense(k_dev), dense(k_cpu), atol=atol)
    # a gain sums one entry per row: kernels within atol move a gain by at most rows x atol,
    # so a pick whose margin is over twice that is the same pick on either kernel
    picks, margins = _greedy_fl_margins(dense(k_cpu).astype(np.float64), 6)
    budget = next((i for i, m in enumerate(margins) if m <= 2 * len(ids) * atol), 6)
    assert budget >= 2, margins
    want = picks[:budget]
    cpu = select(k_cpu.matrix, budget, "facility_location", "lazy")
    dev = select(k_dev.matrix, budget, "facility_location", "lazy")
    assert cpu.ranking.tolist() == want
    assert dev.ranking.tolist() == want
    np.testing.assert_allclose(dev.gains, cpu.gains, atol=len(ids) * atol)
    naive = select(k_dev.matrix, budget, "facility_location", "naive")
    assert naive.ranking.tolist() == want
