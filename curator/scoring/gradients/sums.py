"""Gradient sums over batches: what an engine computes for the gradient statistics
(``curator.scoring.engine``: here, or shards of whole batches on Ray actors, whose sums add
up to the same G and C)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.gradients.batching import _max_len, _pad_id, encode_samples, iter_batches
from curator.scoring.gradients.losses import only_grad, response_losses
from curator.scoring.gradients.scope import Grads, ScopedModule, scope_parameters


def zeros_like(params: Mapping[str, nn.Parameter]) -> Grads:
    """An fp32 zero per parameter, on the parameter's device."""
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for n, p in params.items()}


def gradient_sums(lm: LoadedModel, samples: Sequence[Sample], scope: Sequence[ScopedModule],
                  batch_size: int = 8, max_length: int | None = None, curvature: bool = True,
                  batches: Sequence[Sequence[int]] | None = None,
                  ) -> tuple[Grads, Grads, int, int]:
    """(G, C, n, b) over ``batches`` of sample indices (default: similar-length batches,
    ``plan_batches``): G the sum of per-sample gradients, C the SUM over the b batches of
    the squared batch-mean gradient (zeros without ``curvature``), n the samples counted."""
    model = lm.model
    params = scope_parameters(model, scope)
    G, c = zeros_like(params), zeros_like(params)
    names, plist = list(params), list(params.values())
    encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
    n = n_batches = 0
    with only_grad(model, plist):
        for idx, batch in iter_batches(encoded, batch_size, _pad_id(lm.tokenizer), lm.device,
                                       batches):
            loss = response_losses(model, batch).sum()
            grads = torch.autograd.grad(loss, plist, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                g = g.float()
                G[name] += g
                if curvature:
                    c[name] += (g / len(idx)) ** 2
            n += len(idx)
            n_batches += 1
    return G, c, n, n_batches
