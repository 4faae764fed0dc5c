"""GAST: a data subset per layer, from the alignment of each sample's layer gradient with a
support (target) gradient, ``score[n, l] = <g_n^l, s^l>``.

All layers' scores come from one hook pass (curator.scoring.gradients.hook_scores with
u = s, summed per layer). GAST's ablation found deterministic top-k far worse than
sampling, so the default rule samples: standardise a layer's scores over the pool,
``p = softmax(z / temperature)``, draw k samples without replacement (Gumbel top-k, which
is exactly sequential sampling without replacement from p), seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.gradients import (
    ScopedModule,
    hook_scores,
    mean_gradient,
    resolve_scope,
)
from curator.selection.dualsft import resolve_count

RULES = ("sample", "topk")


@dataclass
class GASTResult:
    layer_subsets: dict[str, list[int]]  # layer name -> pool indices (in pick order)
    layers: list[str]
    scores: np.ndarray  # (N, L) <g_n^l, s^l>; NaN rows for skipped samples
    skipped: list[int] = field(default_factory=list)

    def subsets_by_id(self, pool: Sequence[Sample]) -> dict[str, list[str]]:
        return {layer: [pool[i].sample_id for i in idx]
                for layer, idx in self.layer_subsets.items()}


def choose(scores: np.ndarray, k: int, rule: str = "sample", temperature: float = 1.0,
           generator: torch.Generator | None = None) -> list[int]:
    """k indices from one layer's (n,) scores by the sampled rule or top-k; NaN never picked."""
    if rule not in RULES:
        raise ValueError(f"unknown GAST rule {rule!r}; use one of {', '.join(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ok = np.flatnonzero(~np.isnan(scores))
    k = min(k, ok.size)
    x = torch.as_tensor(scores[ok], dtype=torch.float64)
    if rule == "topk":
        keys = x
    else:
        std = x.std(unbiased=False)
        z = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
        # log-softmax up to a constant is z / T; adding Gumbel noise and taking the top k
        # samples k items without replacement with probabilities softmax(z / T).
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0)
        keys = z / temperature - torch.log(-torch.log(u))
    # stable: equal keys keep pool order, so top-k is deterministic
    order = torch.sort(keys, descending=True, stable=True).indices[:k]
    return [int(ok[i]) for i in order]


def gast_select(lm: LoadedModel, pool: Sequence[Sample], targets: Sequence[Sample] | None,
                budget: int | float = 0.3, rule: str = "sample", temperature: float = 1.0,
                seed: int = 0, scope: Sequence[ScopedModule] | None = None,
                batch_size: int = 8, score_batch_size: int = 16, max_length: int = 1024,
                holdout_fraction: float = 0.1, progress: bool = False) -> GASTResult:
    """Per-layer subsets of ``pool`` (each of ``budget`` samples) aligned with ``targets``.

    ``targets`` None: the support gradient comes from a seeded held-out slice of the pool.
    Layers are transformer blocks; scoped modules outside them (a head) form "(other)".
    """
    if rule not in RULES:
        raise ValueError(f"unknown GAST rule {rule!r}; use one of {', '.join(RULES)}")
    if not pool:
        raise ValueError("the pool is empty")
    if targets is not None and len(targets) == 0:
        raise ValueError("the target set is empty; pass None to use a held-out slice of the pool")
    k = resolve_count(budget, len(pool), "data")
    scope = list(scope) if scope is not None else resolve_scope(lm.model)
    if targets is None:
        if not 0.0 < holdout_fraction <= 1.0:
            raise ValueError("holdout_fraction must be in (0, 1]")
        g = torch.Generator().manual_seed(seed)
        n_hold = max(1, round(holdout_fraction * len(pool)))
        targets = [pool[i] for i in sorted(torch.randperm(len(pool), generator=g)[:n_hold].tolist())]
    support, _ = mean_gradient(lm, targets, scope, batch_size, max_length)
    scored = hook_scores(lm, pool, support, scope, score_batch_size, max_length, progress)
    layers, per_layer = scored.per_layer()
    gen = torch.Generator().manual_seed(seed)
    subsets = {layer: choose(per_layer[:, j], k, rule, temperature, gen)
               for j, layer in enumerate(layers)}
    return GASTResult(subsets, layers, per_layer, scored.skipped)
