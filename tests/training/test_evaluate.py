"""curator.training.evaluate: answer extraction, greedy generation, exact match, per-row losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring.encoding import render, tokenize
from curator.testing import tiny_loaded_model, tiny_tokenizer
from curator.training.evaluate import (
    answers_match,
    compile_pattern,
    exact_match,
    extract_answer,
    generate_greedy,
    normalise_answer,
    row_losses,
)
from curator.training.finetune import eval_loss

GSM8K = r"#### (.*)"


def test_extract_answer_by_hand():
    assert extract_answer("so 3 + 4 = 7\n#### 7", GSM8K) == "7"
    assert extract_answer("#### 1,000 apples", GSM8K) == "1,000 apples"
    assert extract_answer("no marker here", GSM8K) is None
    assert extract_answer("Answer: yes, plausible", r"(?i)\b(yes|no)\b") == "yes"
    assert extract_answer("the answer is (B).", r"\([A-E]\)") == "(B)"   # no group: whole
    assert extract_answer("  free text  ") == "  free text  "             # no pattern


def test_normalise_answer_by_hand():
    assert normalise_answer("The Coriolis effect.") == "coriolis effect"
    assert normalise_answer("1,000") == normalise_answer("1000") == "1000"
    assert normalise_answer("3.5") == "3.5" and normalise_answer("35") != "3.5"
    assert normalise_answer("$18.") == "18"
    assert normalise_answer("(A)") == "a" and normalise_answer("(B)") == "b"
    assert normalise_answer("  Yes!! ") == "yes"


def test_answers_match_by_hand():
    assert answers_match("Natalia sold 72 clips.\n#### 72", "48 + 24 = 72\n#### 72", GSM8K)
    assert not answers_match("Natalia sold 72 clips.", "#### 72", GSM8K)   # no marker: miss
    assert not answers_match("#### 71", "#### 72", GSM8K)
    assert answers_match("#### 1,234", "#### 1234", GSM8K)
    # a reference the pattern does not match is compared whole
    assert answers_match("Yes, it is plausible.", "yes", r"(?i)\b(yes|no)\b")
    assert not answers_match("No.", "yes", r"(?i)\b(yes|no)\b")
    assert answers_match("The mesophilic organisms", "mesophilic organisms")


def test_bad_pattern_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="not a valid regex"):
        compile_pattern("#### (.*")


def _reference_greedy(lm, sample: Sample, max_new_tokens: int) -> str:
    """A plain argmax loop without cache, padding or generate(): the reference."""
    tok = lm.tokenizer
    ids = tokenize(tok, render(tok, sample.prompt_messages, "")[0])
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt in stops:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


PROMPTS = ["What is 2 + 2?", "Name a colour.", "Spell the word cat backwards, please.",
           "hi", "Write one short sentence about rivers and stones."]


def test_batched_greedy_equals_a_plain_loop(tiny_lm):
    samples = [Sample.from_pair(p, "x") for p in PROMPTS]
    got = generate_greedy(tiny_lm, samples, max_new_tokens=6, batch_size=3)
    want = [_reference_greedy(tiny_lm, s, 6) for s in samples]
    assert got == want


def test_exact_match_on_a_known_case():
    # tiny Qwen2 (seed 0) is the tiny model whose greedy outputs differ between these
    # prompts and do not normalise to "" (tiny Llama only emits newlines)
    from curator.testing import tiny_loaded_model

    tiny = tiny_loaded_model("qwen2", seed=0)
    prompts = PROMPTS[:4]
    greedy = [_reference_greedy(tiny, Sample.from_pair(p, "x"), 5) for p in prompts]
    assert all(normalise_answer(g) for g in greedy)  # the case is not trivially empty
    # references equal to what greedy decoding produces for rows 0 and 2, wrong for 1 and 3
    refs = [greedy[0], "zq definitely not generated", greedy[2], greedy[3] + " qz"]
    samples = [Sample.from_pair(p, r) for p, r in zip(prompts, refs, strict=True)]
    result = exact_match(tiny, samples, max_new_tokens=5, batch_size=2)
    assert result.hits == [True, False, True, False]
    assert result.score == 0.5
    assert result.generations == greedy
    # the same generations behind a pattern that never matches: every row is a miss
    none = exact_match(tiny, samples, max_new_tokens=5, answer_pattern=r"#### (\d+)")
    assert none.hits == [False] * 4 and none.predicted == [None] * 4


def test_row_losses_mean_is_eval_loss(tiny_llama):
    samples = [Sample.from_pair(p, r) for p, r in
               [("a b c", "d e"), ("one two", "three four five"), ("x", "y" * 40)]]
    for tokens in ("answer", "response"):
        per_row = row_losses(tiny_llama, samples, batch_size=2, tokens=tokens)
        assert per_row.shape == (3,) and np.isfinite(per_row).all()
        assert per_row.mean() == pytest.approx(
            eval_loss(tiny_llama, samples, batch_size=3, tokens=tokens), rel=1e-5)
        alone = [row_losses(tiny_llama, [s], tokens=tokens)[0] for s in samples]  # order kept
        np.testing.assert_allclose(per_row, alone, rtol=1e-4)
        # a response longer than the context: NaN, not a number
        short = row_losses(tiny_llama, samples, max_length=20, tokens=tokens)
        assert np.isnan(short[2]) and np.isfinite(short[:2]).all()


def _peaky(lm):
    """Sharpen the random model so the end-of-turn tokens' loss stands out."""
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(40.0)
    return lm


def _by_hand(lm, sample: Sample, max_length: int = 1024) -> tuple[float, float]:
    """(answer loss, response loss) of one row, one unbatched forward: the answer is the
    answer tokenised alone, the response everything the template puts after the prompt."""
    prompt_text, response_text = render(lm.tokenizer, sample.prompt_messages, sample.response)
    response = tokenize(lm.tokenizer, response_text)
    prompt = tokenize(lm.tokenizer, prompt_text)[-(max_length - len(response)):]
    n = len(tokenize(lm.tokenizer, sample.response))
    ids = prompt + response
    with torch.no_grad():
        logp = lm.model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    nll = [-float(logp[p - 1, ids[p]]) for p in range(len(prompt), len(ids))]
    return float(np.mean(nll[:n])), float(np.mean(nll))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_eval_loss_is_over_the_answer_tokens_by_default(arch):
    lm = _peaky(tiny_loaded_model(arch))
    samples = [Sample.from_pair("What is blue?", "the sky"),
               Sample.from_pair("Count to three.", "one two three", system="Be brief."),
               Sample.from_pair("a " * 30 + "long prompt", "cut from the left")]
    hand = [_by_hand(lm, s, max_length=24) for s in samples]
    answer, response = (np.array(x) for x in zip(*hand, strict=True))
    assert np.all(np.abs(answer - response) > 0.05)  # the end-of-turn tokens weigh here
    got = row_losses(lm, samples, batch_size=2, max_length=24)
    np.testing.assert_allclose(got, answer, rtol=1e-4)
    assert eval_loss(lm, samples, max_length=24) == pytest.approx(answer.mean(), rel=1e-4)
    # "response": the whole response, end-of-turn tokens included (the earlier loss)
    got = row_losses(lm, samples, batch_size=2, max_length=24, tokens="response")
    np.testing.assert_allclose(got, response, rtol=1e-4)
    assert eval_loss(lm, samples, max_length=24, tokens="response") == pytest.approx(
        response.mean(), rel=1e-4)


def test_eval_tokens_without_a_chat_template_leave_out_the_eos():
    from curator.models import wrap_model
    from curator.testing import tiny_causal_lm

    tok = tiny_tokenizer(chat_template=False)
    lm = _peaky(wrap_model(tiny_causal_lm("llama", vocab_size=len(tok)), tok, name="plain",
                           device="cpu", dtype="fp32"))
    s = Sample.from_pair("What is blue?", "the sky")
    answer, response = _by_hand(lm, s)
    assert row_losses(lm, [s])[0] == pytest.approx(answer, rel=1e-4)
    assert row_losses(lm, [s], tokens="response")[0] == pytest.approx(response, rel=1e-4)


def test_eval_tokens_name_is_checked(tiny_llama):
    samples = [Sample.from_pair("q", "a")]
    with pytest.raises(ValueError, match="unknown eval tokens 'prompt'; use one of answer, "
                                         "response"):
        eval_loss(tiny_llama, samples, tokens="prompt")
    # a row whose answer has no token of its own is not scored; none left: a clear error
    empty = [Sample.from_pair("q", "")]
    assert np.isnan(row_losses(tiny_llama, empty)[0])
    with pytest.raises(ValueError, match="with an answer of its own"):
        eval_loss(tiny_llama, empty)