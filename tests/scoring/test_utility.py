"""Pairwise utility: the cached, batched engine against the one-pair-per-forward oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring.neighbours import dense_pairs
from curator.scoring.templates import PairTemplate
from curator.scoring.utility import (
    PairChunk,
    UtilityConfig,
    distance_from_logprobs,
    score_pairs,
    score_pairs_reference,
    score_targets,
)
from curator.testing import tiny_loaded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def samples(chat_samples):
    s = chat_samples(7)
    return {x.sample_id: x for x in s}


@pytest.fixture(scope="module")
def pairs(samples):
    return dense_pairs(list(samples))


def run(lm, samples, pairs, cfg, **kw) -> PairChunk:
    return PairChunk.concat(list(score_pairs(lm, samples, pairs, cfg, **kw)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("template", ["chat", "plain"])
def test_engine_equals_reference(arch, template, samples, pairs, peaky):
    lm = peaky(tiny_loaded_model(arch))
    cfg = UtilityConfig(distance="nll", template=template)
    ref = score_pairs_reference(lm, samples, pairs, cfg)
    assert ref.valid.all()
    assert np.abs(ref.utility).mean() > 1e-3  # the comparison below is not vacuous
    want = ref.as_dict()
    d_want = dict(zip(zip(ref.target_id, ref.example_id, strict=True),
                      ref.d_target_given_example, strict=True))
    for reuse in (True, False):
        # Small batches and chunks: several prefixes of different lengths per batch, so the
        # padded-prefix holes in the attention mask and the position offsets are exercised.
        got = run(lm, samples, pairs, cfg, batch_size=4, chunk_pairs=9, prefix_reuse=reuse)
        assert sorted(zip(got.target_id, got.example_id, strict=True)) == sorted(pairs)
        for t, e, u, d in zip(got.target_id, got.example_id, got.utility,
                              got.d_target_given_example, strict=True):
            assert u == pytest.approx(want[(t, e)], abs=2e-5)
            assert d == pytest.approx(d_want[(t, e)], rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_shared_head_runs_once_and_matches_the_reference(arch, peaky, chat_samples):
    # Every sample has the same system prompt, so every prefix batch shares one head: the
    # head's cache is computed once and expanded (examples and d(i) continue from it).
    lm = peaky(tiny_loaded_model(arch))
    rng = np.random.default_rng(3)
    plain = chat_samples(6, seed=3)
    same = {s.sample_id: s for s in [
        Sample.from_pair(x.prompt, x.response, system="Answer as a pirate would, briefly.")
        for x in plain]}
    pairs = dense_pairs(list(same))
    rng.shuffle(pairs)
    cfg = UtilityConfig(distance="nll", template="chat")
    tpl = PairTemplate(lm.tokenizer, "chat")
    assert len({tpl.target(x).head for x in same.values()}) == 1
    ref = score_pairs_reference(lm, same, pairs, cfg)
    got = run(lm, same, pairs, cfg, batch_size=3, chunk_pairs=7)
    want = ref.as_dict()
    for (t, e), u in got.as_dict().items():
        assert u == pytest.approx(want[(t, e)], abs=2e-5)
    d_ref = dict(zip(ref.target_id, ref.d_target, strict=True))
    d_got = score_targets(lm, list(same.values()), cfg, batch_size=4)
    assert d_got == pytest.approx(d_ref, rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prob_l2_engine_equals_reference(arch, samples, pairs):
    lm = tiny_loaded_model(arch)
    cfg = UtilityConfig(distance="prob-l2")  # the paper's distance, chat template
    ref = score_pairs_reference(lm, samples, pairs, cfg)
    got = run(lm, samples, pairs, cfg, batch_size=3, chunk_pairs=5)
    d_want = dict(zip(zip(ref.target_id, ref.example_id, strict=True),
                      ref.d_target_given_example, strict=True))
    for t, e, d in zip(got.target_id, got.example_id, got.d_target_given_example, strict=True):
        assert d == pytest.approx(d_want[(t, e)], abs=1e-6)
    assert 0.0 < float(np.nanmin(got.d_target)) <= float(np.nanmax(got.d_target)) <= 1.0


def test_distance_by_hand():
    p = torch.tensor([0.5, 1.0, 0.2, 0.9])
    seg = torch.tensor([0, 0, 0, 1])
    l2 = distance_from_logprobs(p.log(), seg, 2, "prob-l2")
    assert l2[0].item() == pytest.approx(math.sqrt((0.25 + 0.0 + 0.64) / 3), rel=1e-6)
    assert l2[1].item() == pytest.approx(0.1, rel=1e-5)
    nll = distance_from_logprobs(p.log(), seg, 2, "nll")
    assert nll[0].item() == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 3, rel=1e-6)
    assert nll[1].item() == pytest.approx(-math.log(0.9), rel=1e-5)


def test_utility_is_difference_and_targets_match(samples, pairs):
    lm = tiny_loaded_model("qwen2")
    got = run(lm, samples, pairs[:12], UtilityConfig())
    np.testing.assert_allclose(got.utility, got.d_target - got.d_target_given_example,
                               atol=1e-6)
    d = score_targets(lm, [samples[t] for t in set(got.target_id)])
    for t, dt in zip(got.target_id, got.d_target, strict=True):
        assert dt == pytest.approx(d[t], abs=1e-6)


def test_prefix_layout_and_example_position():
    """With a chat template the example is an earlier turn pair after the system prompt."""
    lm = tiny_loaded_model("llama")
    tok = lm.tokenizer
    target = Sample.from_pair("Q target", "A target", system="SYS")
    example = Sample.from_pair("Q example", "A example", system="OTHER")
    tpl = PairTemplate(tok, "chat")
    t = tpl.target(target)
    text = tok.decode(list(t.head + tpl.example(example) + t.turns + t.response))
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n"
                    "<|im_start|>user\nQ example<|im_end|>\n"
                    "<|im_start|>assistant\nA example<|im_end|>\n"
                    "<|im_start|>user\nQ target<|im_end|>\n"
                    "<|im_start|>assistant\nA target<|im_end|>\n")


def test_truncation_cuts_example_first():
    lm = tiny_loaded_model("llama")
    target = Sample.from_pair("short question", "short answer")
    long_example = Sample.from_pair("x " * 200, "y " * 50)
    by = {s.sample_id: s for s in (target, long_example)}
    tpl = PairTemplate(lm.tokenizer, "chat")
    n_target = tpl.target(target).n_tokens
    cfg = UtilityConfig(distance="prob-l2", max_length=n_target + 40, min_example_tokens=16)
    pair = [(target.sample_id, long_example.sample_id)]
    got = run(lm, by, pair, cfg)
    ref = score_pairs_reference(lm, by, pair, cfg)
    assert got.valid.all() and got.truncated.all()
    assert got.utility[0] == pytest.approx(ref.utility[0], abs=1e-6)
    # The target's own distance is the untruncated one.
    assert got.d_target[0] == pytest.approx(score_targets(lm, [target], cfg)[target.sample_id])


def test_pair_that_cannot_fit_is_invalid_not_useful():
    lm = tiny_loaded_model("gpt2")
    target = Sample.from_pair("a question " * 20, "an answer " * 10)
    example = Sample.from_pair("another question", "another answer")
    by = {s.sample_id: s for s in (target, example)}
    n_target = PairTemplate(lm.tokenizer, "chat", "answer").target(target).n_tokens
    forward = [(target.sample_id, example.sample_id)]
    backward = [(example.sample_id, target.sample_id)]
    # Room for the target but fewer than min_example_tokens for the example: invalid.
    cfg = UtilityConfig(max_length=n_target + 5, min_example_tokens=16)
    got = run(lm, by, forward, cfg)
    assert not got.valid[0] and math.isnan(got.utility[0])
    assert "example does not fit" in got.reason[0]
    assert not math.isnan(got.d_target[0])  # the target alone is still scored
    # The target itself does not fit: invalid, whatever the example.
    cfg = UtilityConfig(max_length=n_target - 1)
    got = run(lm, by, forward + backward, cfg)
    by_pair = {(t, e): (v, r) for t, e, v, r in
               zip(got.target_id, got.example_id, got.valid, got.reason, strict=True)}
    assert by_pair[forward[0]][0] is np.False_ and "target does not fit" in by_pair[forward[0]][1]
    ref = score_pairs_reference(lm, by, forward, cfg)
    assert not ref.valid[0] and math.isnan(ref.utility[0])


def test_config_hash_is_stable_and_sensitive():
    a = UtilityConfig()
    assert a.config_hash() == UtilityConfig().config_hash()
    assert a.config_hash() != UtilityConfig(distance="prob-l2").config_hash()
    assert a.config_hash() != UtilityConfig(max_length=512).config_hash()
    lm = tiny_loaded_model("llama")
    r = a.resolved(lm)
    assert (r.template, r.dtype, r.max_length) == ("chat", "float32", 512)
    with pytest.raises(ValueError, match="bf16"):
        UtilityConfig(dtype="bf16").resolved(lm)


def test_bad_input(samples, pairs):
    lm = tiny_loaded_model("llama")
    with pytest.raises(ValueError, match="unknown distance"):
        UtilityConfig(distance="cosine")
    with pytest.raises(ValueError, match="unknown template"):
        UtilityConfig(template="fancy")
    with pytest.raises(ValueError, match="no pairs"):
        score_pairs(lm, samples, [])
    with pytest.raises(KeyError, match="not in samples_by_id"):
        score_pairs(lm, samples, [("nope", pairs[0][1])])
    with pytest.raises(ValueError, match="no ids"):
        dense_pairs([])


def test_chunks_resume_and_known_targets(samples, pairs):
    lm = tiny_loaded_model("llama")
    chunks = list(score_pairs(lm, samples, pairs, batch_size=2, chunk_pairs=6))
    assert len(chunks) > 1 and all(len(c) <= 6 for c in chunks)
    assert len({c.config_hash for c in chunks}) == 1
    # A resumed run passes the d(i) it already has; the numbers do not change.
    known = dict(zip(chunks[0].target_id, chunks[0].d_target.tolist(), strict=True))
    again = PairChunk.concat(list(score_pairs(lm, samples, pairs, batch_size=2, chunk_pairs=6,
                                              target_distances=known)))
    first = PairChunk.concat(chunks).as_dict()
    for k, v in again.as_dict().items():
        assert v == pytest.approx(first[k], abs=1e-6)


@pytest.mark.slow
def test_default_model_prefix_reuse_matches_reference():
    from curator.models import load_model

    s = [Sample.from_pair("What is the capital of France?", "Paris is the capital of France."),
         Sample.from_pair("Name a primary colour.", "Red is a primary colour."),
         Sample.from_pair("What is 2 + 3?", "2 + 3 = 5."),
         Sample.from_pair("Translate 'bonjour' to English.", "Hello.")]
    by = {x.sample_id: x for x in s}
    pairs = dense_pairs(list(by))
    lm32, lm16 = load_model(None, dtype="fp32"), load_model(None, dtype="bf16")
    for distance in ("prob-l2", "nll"):
        cfg = UtilityConfig(distance=distance)
        truth = score_pairs_reference(lm32, by, pairs, cfg).as_dict()
        # fp32: the cached, batched, shared-head engine is the reference computation.
        got = run(lm32, by, pairs, cfg, batch_size=4).as_dict()
        for p in pairs:
            assert got[p] == pytest.approx(truth[p], abs=1e-4), (distance, p)
        # bf16: no closer to the fp32 values than bf16 arithmetic allows, but not much
        # further from them than the bf16 reference itself (kernels round differently).
        # The floor is what the attention kernel alone moves: on an AMD EPYC with
        # AVX512-BF16 the nll engine's mean error was 0.078 nats against its reference's
        # 0.015 with SDPA, 0.028 against 0.027 with eager attention, 0.047 against 0.042
        # with SDPA over fp32 casts (the continuation attends to a cache, the reference
        # runs whole rows: different SDPA kernels); on Intel Xeons within 2x. The fp32 check
        # above is the exact one.
        got16 = run(lm16, by, pairs, cfg, batch_size=4).as_dict()
        ref16 = score_pairs_reference(lm16, by, pairs, cfg).as_dict()
        err = np.mean([abs(got16[p] - truth[p]) for p in pairs])
        err_ref = np.mean([abs(ref16[p] - truth[p]) for p in pairs])
        floor = {"prob-l2": 0.01, "nll": 0.1}[distance]
        assert err <= 2 * err_ref + floor, (distance, err, err_ref)


def test_inference_mode_does_not_leak_to_the_caller(samples, pairs):
    lm = tiny_loaded_model("llama")
    it = score_pairs(lm, samples, pairs[:4], chunk_pairs=2)
    next(it)
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()


def test_cache_keyword_follows_the_installed_transformers():
    """The cache goes in under the name the forward takes: ``cache`` since transformers 5.24,
    ``past_key_values`` before it (an unknown name would vanish into **kwargs and the
    suffix would be scored without its prefix)."""
    import transformers
    from packaging.version import Version

    from curator.scoring.utility import _cache_name

    base = tiny_loaded_model("llama").model.base_model
    new = Version(transformers.__version__) >= Version("5.24")
    assert _cache_name(base) == ("cache" if new else "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs):
            return input_ids

    class NoCache(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return input_ids

    assert _cache_name(Old()) == "past_key_values"
    with pytest.raises(TypeError, match="no key/value cache"):
        _cache_name(NoCache())


def test_scoring_logs_no_deprecation(samples, pairs):
    """transformers reports some deprecations through its logger (warning_once), which
    pytest's filterwarnings does not see: check that log too, with its once-cache cleared."""
    import logging

    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    hf_logging.get_logger().warning_once.cache_clear()
    handler = Keep(level=logging.WARNING)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        lm = tiny_loaded_model("llama")
        cfg = UtilityConfig(distance="nll", template="chat")
        run(lm, samples, pairs, cfg, batch_size=4, chunk_pairs=9, prefix_reuse=True)
        score_targets(lm, list(samples.values()), cfg)
    finally:
        root.removeHandler(handler)
    assert not [m for m in records if "deprecat" in m.lower()], records
