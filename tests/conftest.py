"""Shared fixtures: tiny models, temporary stores. Nothing here downloads anything."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def tiny_lm(request):
    """A tiny randomly initialised causal LM of each architecture family (CPU, fp32)."""
    from curator.testing import tiny_loaded_model

    return tiny_loaded_model(request.param)


@pytest.fixture
def tiny_llama():
    from curator.testing import tiny_loaded_model

    return tiny_loaded_model("llama")
