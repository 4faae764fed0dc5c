"""Embeddings: position-weighted pooling against a direct computation, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curator.records import Sample
from curator.scoring.embeddings import (
    embed_samples,
    embedder_fingerprint,
    weighted_mean_pool,
)
from curator.scoring.encoding import encode
from curator.testing import tiny_loaded_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SAMPLES = [Sample.from_pair("hello there", "general kenobi"),
           Sample.from_pair("a much longer prompt about cats and dogs", "ok"),
           Sample.from_pair("x", "a response that is rather long as well, with words")]


def test_weighted_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]],
                           [[2.0, 2.0], [4.0, 0.0], [0.0, 6.0]]])  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = weighted_mean_pool(hidden, mask)
    # Row 0: weights 1, 2 over two real tokens; the padded 9s are ignored.
    want0 = (1 * torch.tensor([1.0, 0.0]) + 2 * torch.tensor([0.0, 1.0])) / 3
    want1 = (1 * torch.tensor([2.0, 2.0]) + 2 * torch.tensor([4.0, 0.0])
             + 3 * torch.tensor([0.0, 6.0])) / 6
    torch.testing.assert_close(got, torch.stack([want0, want1]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_embeddings_equal_direct_computation(arch):
    lm = tiny_loaded_model(arch)
    got = embed_samples(lm, SAMPLES, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3, lm.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for row, s in enumerate(SAMPLES):
        ids = encode(lm.tokenizer, s.prompt_messages, s.response, 512).input_ids
        with torch.no_grad():
            h = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        last = h.hidden_states[-1][0]  # (T, d), after the final norm
        w = torch.arange(1, len(ids) + 1, dtype=torch.float32)
        v = (w[:, None] * last).sum(0) / w.sum()
        v = (v / v.norm()).numpy()
        np.testing.assert_allclose(got[row], v, atol=1e-5)


def test_batching_does_not_change_embeddings():
    lm = tiny_loaded_model("qwen2")
    a = embed_samples(lm, SAMPLES, batch_size=1)
    b = embed_samples(lm, SAMPLES, batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_fingerprint_and_bad_input():
    lm = tiny_loaded_model("llama")
    fp = embedder_fingerprint(lm)
    assert lm.fingerprint in fp and "L512" in fp
    assert embedder_fingerprint(lm, max_length=128) != fp
    with pytest.raises(ValueError, match="no samples"):
        embed_samples(lm, [])

