"""The method registry: every name the vocabulary offers has exactly one ranker."""

from __future__ import annotations

import pytest

from curator.stages import RANKERS
from curator.stages.registry import ranker
from curator.vocabulary import GRADIENT_METHODS, KERNEL_METHODS, METHODS, MODEL_METHODS


def test_every_method_has_a_ranker_and_nothing_else_does():
    assert set(RANKERS) == set(METHODS)
    assert set(GRADIENT_METHODS) | set(KERNEL_METHODS) <= set(MODEL_METHODS) <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        ranker("nope")
