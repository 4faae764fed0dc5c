"""The quality prior's per-row signals: the batched engine against a straightforward
per-row computation, the answer/end-of-turn split and the unconditional pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring.encoding import answer_split, render, tokenize
from curator.scoring.quality import QualityConfig, quality_reference, score_quality
from curator.testing import tiny_loaded_model, tiny_tokenizer


def nll_at(lm, ids: list[int], positions: range) -> np.ndarray:
    """-log p(ids[p] | ids[:p]) for p in positions, one unbatched forward: the hand path."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    return np.array([-float(logp[p - 1, ids[p]]) for p in positions])


def test_answer_split_excludes_the_end_of_turn_tokens():
    tok = tiny_tokenizer()
    s = Sample.from_pair("What is blue?", "the sky")
    _, response_text = render(tok, s.prompt_messages, s.response)
    response = tokenize(tok, response_text)
    n = answer_split(tok, s.response, response)
    assert n == len(tokenize(tok, "the sky"))
    assert tok.decode(response[n:]) == "<|im_end|>\n"
    assert answer_split(tok, "", response) == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_signals_match_a_per_row_computation(arch, peaky, chat_samples):
    lm = peaky(tiny_loaded_model(arch))
    samples = chat_samples(9)
    got = score_quality(lm, samples, batch_size=4)
    ref = quality_reference(lm, samples)
    assert got.reason == [""] * len(samples)
    for field in ("loss", "uncond_loss", "stop_nll"):
        np.testing.assert_allclose(getattr(got, field), getattr(ref, field), rtol=1e-4,
                                   atol=1e-4, err_msg=field)
    # by hand for one row: answer tokens only, the stop token, the empty-user pass
    s = samples[1]
    prompt_text, response_text = render(lm.tokenizer, s.prompt_messages, s.response)
    prompt, response = tokenize(lm.tokenizer, prompt_text), tokenize(lm.tokenizer, response_text)
    n = len(tokenize(lm.tokenizer, s.response))
    ids = prompt + response
    nll = nll_at(lm, ids, range(len(prompt), len(prompt) + n + 1))
    assert got.loss[1] == pytest.approx(nll[:n].mean(), rel=1e-4)
    assert got.stop_nll[1] == pytest.approx(nll[n], rel=1e-4)
    empty_text, _ = render(lm.tokenizer, [{"role": "user", "content": ""}], s.response)
    empty = tokenize(lm.tokenizer, empty_text)
    u = nll_at(lm, empty + response, range(len(empty), len(empty) + n))
    assert got.uncond_loss[1] == pytest.approx(u.mean(), rel=1e-4)
    assert got.ifd[1] == pytest.approx(nll[:n].mean() / u.mean(), rel=1e-4)
    assert int(got.n_answer[1]) == n


def test_without_a_chat_template_the_plain_layout_is_scored(peaky, chat_samples):
    from curator.models import wrap_model
    from curator.testing import tiny_causal_lm

    tok = tiny_tokenizer(chat_template=False)
    lm = peaky(wrap_model(tiny_causal_lm("llama", vocab_size=len(tok)), tok, name="plain",
                          device="cpu", dtype="fp32"))
    samples = chat_samples(5, seed=3)
    got, ref = score_quality(lm, samples, batch_size=2), quality_reference(lm, samples)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-4)
    np.testing.assert_allclose(got.stop_nll, ref.stop_nll, rtol=1e-4)  # the eos after it


def test_rows_that_cannot_be_scored_say_why():
    lm = tiny_loaded_model("llama")
    ok = Sample.from_pair("a question", "an answer")
    long = Sample.from_pair("q", "word " * 400)
    got = score_quality(lm, [ok, long], QualityConfig(max_length=64))
    assert got.reason[0] == ""
    assert got.reason[1].startswith("answer does not fit")
    assert np.isnan(got.loss[1]) and np.isfinite(got.loss[0])
    # the prompt is cut from the left, never the answer
    short = score_quality(lm, [Sample.from_pair("x " * 200, "yes")], QualityConfig(max_length=64))
    assert short.reason == [""] and int(short.n_answer[0]) == len(tokenize(lm.tokenizer, "yes"))
