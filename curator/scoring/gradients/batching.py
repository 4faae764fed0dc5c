"""Encoding samples and grouping them into batches for gradient passes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.encoding import EncodedSample, collate, encode, length_batches


def encode_samples(tokenizer: object, samples: Sequence[Sample],
                   max_length: int) -> list[EncodedSample | None]:
    """None for a sample whose response alone does not fit in max_length."""
    return [encode(tokenizer, s.prompt_messages, s.response, max_length) for s in samples]


def _pad_id(tokenizer: object) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def plan_batches(encoded: Sequence[EncodedSample | None], batch_size: int) -> list[list[int]]:
    """Sample indices per batch, similar lengths together; skipped samples left out."""
    ok = [i for i, e in enumerate(encoded) if e is not None]
    return [[ok[g] for g in group]
            for group in length_batches([len(encoded[i].input_ids) for i in ok], batch_size)]


def iter_batches(encoded: Sequence[EncodedSample | None], batch_size: int, pad_id: int,
                 device: torch.device, batches: Sequence[Sequence[int]] | None = None,
                 ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(sample indices, collated batch) for ``batches`` (default: ``plan_batches``)."""
    for idx in (plan_batches(encoded, batch_size) if batches is None else batches):
        idx = list(idx)
        yield idx, collate([encoded[i] for i in idx], pad_id, device)


# Per-batch cost, in padded tokens, that padding_aware_batches weighs against padding: on
# SmolLM2 on CPU a scoring batch's fixed cost (hooks, small kernels) is worth a few dozen
# tokens of compute, and matmuls over a few hundred rows already run near full speed.
BATCH_OVERHEAD_TOKENS = 64


def padding_aware_batches(lengths: Sequence[int], batch_size: int,
                          overhead: float = BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Index batches of at most ``batch_size`` samples, longest first, cutting the sorted
    lengths where padded tokens + ``overhead`` per batch is smallest (exact dynamic
    programme over contiguous groups; O(len * batch_size)). Only for passes whose results
    do not depend on the batching (per-sample scores): a lone long sample gets a batch of
    its own instead of padding fifteen others to its length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    L = [lengths[i] for i in order]
    n = len(L)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            c = best[i] + (j - i) * L[i] + overhead  # L[i]: the group's longest
            if c < best[j]:
                best[j], cut[j] = c, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_len(lm: LoadedModel, max_length: int | None) -> int:
    return min(max_length or 1024, lm.max_length)
