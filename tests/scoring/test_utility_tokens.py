"""DELIFT's d over the answer's own tokens (the default) or the whole response: the
end-of-turn tokens are neither scored nor in the sequence with ``tokens="answer"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring.encoding import render, tokenize
from curator.scoring.utility import (
    UtilityConfig,
    score_pairs,
    score_pairs_reference,
    score_targets,
)
from curator.testing import tiny_loaded_model


def samples() -> list[Sample]:
    return [Sample.from_pair("Name a colour of the sky.", "blue"),
            Sample.from_pair("What do cats chase?", "mice and string"),
            Sample.from_pair("Say yes.", "yes", system="Be brief.")]


def test_answer_tokens_only_by_hand(peaky):
    lm = peaky(tiny_loaded_model("llama"))
    s = samples()[1]
    prompt_text, response_text = render(lm.tokenizer, s.prompt_messages, s.response)
    prompt = tokenize(lm.tokenizer, prompt_text)
    n = len(tokenize(lm.tokenizer, s.response))
    ids = prompt + tokenize(lm.tokenizer, response_text)
    with torch.inference_mode():
        logp = lm.model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    nll = [-float(logp[p - 1, ids[p]]) for p in range(len(prompt), len(ids))]
    got = score_targets(lm, [s], UtilityConfig(distance="nll"))[s.sample_id]
    assert got == pytest.approx(np.mean(nll[:n]), rel=1e-4)       # answer only: the default
    whole = score_targets(lm, [s], UtilityConfig(distance="nll", tokens="response"))
    assert whole[s.sample_id] == pytest.approx(np.mean(nll), rel=1e-4)
    assert got != pytest.approx(whole[s.sample_id], rel=1e-3)


@pytest.mark.parametrize("distance", ["prob-l2", "nll"])
def test_pairs_over_answer_tokens_match_the_reference(distance, peaky):
    lm = peaky(tiny_loaded_model("qwen2"))
    by_id = {s.sample_id: s for s in samples()}
    ids = list(by_id)
    pairs = [(t, e) for t in ids for e in ids if t != e]
    cfg = UtilityConfig(distance=distance)
    fast = {(t, e): u for c in score_pairs(lm, by_id, pairs, cfg, batch_size=2)
            for t, e, u in zip(c.target_id, c.example_id, c.utility, strict=True)}
    ref = score_pairs_reference(lm, by_id, pairs, cfg).as_dict()
    for p in pairs:
        assert fast[p] == pytest.approx(ref[p], abs=1e-4)
    assert cfg.config_hash() != UtilityConfig(distance=distance, tokens="response").config_hash()
