"""curator.evaluate: answer extraction, greedy generation, exact match, per-row losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.evaluate import (
    answers_match,
    compile_pattern,
    exact_match,
    extract_answer,
    generate_greedy,
    normalise_answer,
    response_losses,
)
from curator.records import Sample
from curator.scoring.encoding import render, tokenize
from curator.train import eval_loss

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


def test_response_losses_mean_is_eval_loss(tiny_llama):
    samples = [Sample.from_pair(p, r) for p, r in
               [("a b c", "d e"), ("one two", "three four five"), ("x", "y" * 40)]]
    per_row = response_losses(tiny_llama, samples, batch_size=2)
    assert per_row.shape == (3,) and np.isfinite(per_row).all()
    assert per_row.mean() == pytest.approx(eval_loss(tiny_llama, samples, batch_size=3),
                                           rel=1e-5)
    alone = [response_losses(tiny_llama, [s])[0] for s in samples]  # order kept
    np.testing.assert_allclose(per_row, alone, rtol=1e-4)
    # a response longer than the context: NaN, not a number
    short = response_losses(tiny_llama, samples, max_length=20)
    assert np.isnan(short[2]) and np.isfinite(short[:2]).all()
