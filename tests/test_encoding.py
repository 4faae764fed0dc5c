"""Sample encoding shared by scorers: the response is never cut, the prompt is cut on the left."""

from __future__ import annotations

import pytest
import torch

from curator.scoring.encoding import (
    PLAIN_PROMPT_TEMPLATE,
    EncodedSample,
    collate,
    encode,
    encode_ids,
    has_chat_template,
    length_batches,
    length_groups,
    render,
    tokenize,
)
from curator.testing import tiny_tokenizer

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_render_with_chat_template(tok):
    assert has_chat_template(tok)
    prompt, response = render(tok, USER, "Hello")
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert response == "Hello<|im_end|>\n"


def test_render_without_chat_template():
    plain = tiny_tokenizer(chat_template=False)
    assert not has_chat_template(plain)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render(plain, msgs, "A") == (PLAIN_PROMPT_TEMPLATE.format(prompt="S\n\nQ"), "A</s>")
    # A tokenizer with a template can be told not to use it.
    assert render(tiny_tokenizer(), USER, "A", use_chat_template=False)[1] == "A</s>"


def test_encode_marks_exact_response_tokens(tok):
    enc = encode(tok, USER, "Hello", max_length=512)
    prompt_ids = tokenize(tok, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    response_ids = tokenize(tok, "Hello<|im_end|>\n")
    assert enc == EncodedSample(tuple(prompt_ids + response_ids), len(prompt_ids))
    assert enc.n_response == len(response_ids) == 7  # 5 bytes, <|im_end|>, newline
    assert tok.decode(enc.input_ids[enc.n_prompt:]) == "Hello<|im_end|>\n"


def test_encode_left_truncates_the_prompt_and_never_the_response(tok):
    full = encode(tok, USER, "Hello", max_length=512)
    enc = encode(tok, USER, "Hello", max_length=10)
    assert len(enc.input_ids) == 10
    assert enc.n_response == 7 and enc.n_prompt == 3
    assert enc.input_ids[3:] == full.input_ids[full.n_prompt:]
    assert enc.input_ids[:3] == full.input_ids[full.n_prompt - 3:full.n_prompt]  # the prompt's tail


def test_encode_returns_none_when_the_response_cannot_fit(tok):
    assert encode(tok, USER, "Hello", max_length=8) == EncodedSample(
        encode(tok, USER, "Hello", max_length=512).input_ids[-8:], 1)
    assert encode(tok, USER, "Hello", max_length=7) is None  # response alone, no prompt token
    assert encode(tok, USER, "Hello", max_length=3) is None


def test_encode_ids():
    assert encode_ids([1, 2, 3], [7, 8], 10) == EncodedSample((1, 2, 3, 7, 8), 3)
    assert encode_ids([1, 2, 3], [7, 8], 4) == EncodedSample((2, 3, 7, 8), 2)
    assert encode_ids([1, 2, 3], [7, 8], 3) == EncodedSample((3, 7, 8), 1)
    assert encode_ids([1, 2, 3], [7, 8], 2) is None
    assert encode_ids([1, 2, 3], [], 10) is None
    assert encode_ids([], [7], 5) == EncodedSample((7,), 0)


def test_collate_pads_right_and_masks_prompt_and_padding():
    batch = [EncodedSample((1, 2, 3, 4), 2), EncodedSample((5, 6), 1)]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert all(t.dtype == torch.long for t in out.values())


def test_length_batches_longest_first():
    assert length_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_batches([], 4) == []


def _cost(lengths, groups, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def _partitions(items):
    """Every set partition of ``items`` (the brute-force reference)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


def test_length_groups_by_hand():
    # one long row among short ones: 4 x 100 + 32 = 432 as one batch, 100 + 32 + 30 + 32
    # = 194 split; rows of one length stay together (a split only adds overhead)
    assert length_groups([10, 100, 10, 10], overhead=32) == [[1], [0, 2, 3]]
    assert length_groups([10, 10, 10, 10], overhead=32) == [[0, 1, 2, 3]]
    # near lengths: 3 x 60 + 32 = 212 against 60 + 2 x 50 + 64 = 224, so together
    assert length_groups([50, 60, 50], overhead=32) == [[1, 0, 2]]
    assert length_groups([], overhead=32) == []


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_is_the_cheapest_partition(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.randint(5, 300) for _ in range(rng.randint(1, 7))]
    overhead = rng.choice([0, 16, 32, 100])
    groups = length_groups(lengths, overhead=overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    best = min(_cost(lengths, p, overhead) for p in _partitions(list(range(len(lengths)))))
    assert _cost(lengths, groups, overhead) == best
