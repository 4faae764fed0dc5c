"""GAST's rules over per-layer scores: a data subset per layer, from the alignment of each
sample's layer gradient with a support (target) gradient, ``score[n, l] = <g_n^l, s^l>``.
The pass that computes the scores is ``curator.stages.gradient_passes.gast_select`` (one
hook pass, curator.scoring.gradients.hook_scores with u = s, summed per layer). GAST's
ablation found deterministic top-k far worse than sampling, so the default rule samples:
standardise a layer's scores over the pool, ``p = softmax(z / temperature)``, draw k samples
without replacement (Gumbel top-k, which is exactly sequential sampling without replacement
from p), seeded: the uniform draws come from ``draw`` (a function n -> n uniforms in
[0, 1); ``curator.stages.gradient_passes.torch_uniforms`` draws the stages' from a seeded
torch generator, so the selections stay those of the torch rule).

The data budget is what training touches: the UNION of the layers' subsets (drawing each
layer's k samples independently made the union reach 97% of a pool at a 30% budget).
``layer_subsets`` draws the layers round-robin: in each round every layer takes the next
sample of its own (sampled or top-k) order; once the union holds the budget, a layer's
next sample must already be in the union. Rounds go on until the union holds the budget
and every layer holds at least ``layer_share`` of it, so all layers end with the same
number of samples, each layer's subset is its own preferred part of the union, and the
union is exactly the budget (or the pool's scorable samples, if fewer).

Training (``curator.training.finetune``) honours the map in one of two ways: the static per-layer
subsets above, or, by default with an export that carries the layers' scores, as the paper
trains: batches are drawn from the union and in every batch each layer samples its own rows
from the batch rows it scored (``batch_layer_picks``: the layer's scores standardised
within the batch, ``softmax(z / temperature)``, ``round(layer_share * scored)`` rows drawn
without replacement). The scores are the selection's, taken once at the base model (the
paper recomputes them as training moves).

"""


from __future__ import annotations

from collections.abc import Callable

import numpy as np

RULES = ("sample", "topk")
DEFAULT_LAYER_SHARE = 0.5  # each layer trains on at least this share of the union

Uniforms = Callable[[int], np.ndarray]  # n -> (n,) float64 uniforms in [0, 1)


def uniform_source(draw: Uniforms | np.random.Generator | None) -> Uniforms:
    """``draw`` as a function n -> n uniforms: itself when callable, a numpy Generator's
    ``random``, fresh entropy for None. A torch generator's stream (the stages' and
    training's) comes wrapped by the caller, ``curator.stages.gradient_passes.
    torch_uniforms``: this package imports no torch."""
    if draw is None:
        return np.random.default_rng().random
    if isinstance(draw, np.random.Generator):
        return draw.random
    if callable(draw):
        return draw
    raise TypeError(f"draw: a function n -> n uniforms, a numpy Generator or None, got "
                    f"{type(draw).__module__}.{type(draw).__qualname__} (a torch.Generator: "
                    "pass curator.stages.gradient_passes.torch_uniforms(generator))")


def choose(scores: np.ndarray, k: int, rule: str = "sample", temperature: float = 1.0,
           draw: Uniforms | np.random.Generator | None = None) -> list[int]:
    """k indices from one layer's (n,) scores by the sampled rule or top-k; NaN never
    picked. The sampled rule takes one uniform per scorable entry from ``draw``
    (``uniform_source``); top-k takes none."""
    if rule not in RULES:
        raise ValueError(f"unknown GAST rule {rule!r}; use one of {', '.join(RULES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ok = np.flatnonzero(~np.isnan(scores))
    k = min(k, ok.size)
    x = np.asarray(scores[ok], dtype=np.float64)
    if rule == "topk":
        keys = x
    else:
        std = x.std()
        z = (x - x.mean()) / std if std > 0 else np.zeros_like(x)
        # log-softmax up to a constant is z / T; adding Gumbel noise and taking the top k
        # samples k items without replacement with probabilities softmax(z / T).
        u = np.clip(np.asarray(uniform_source(draw)(x.size), dtype=np.float64), 1e-300, 1.0)
        keys = z / temperature - np.log(-np.log(u))
    # stable: equal keys keep pool order, so top-k is deterministic
    order = np.argsort(-keys, kind="stable")[:k]
    return [int(ok[i]) for i in order]


def layer_subsets(scores: np.ndarray, k: int, rule: str = "sample", temperature: float = 1.0,
                  layer_share: float = DEFAULT_LAYER_SHARE,
                  draw: Uniforms | np.random.Generator | None = None,
                  ) -> tuple[list[list[int]], list[int]]:
    """(per-layer subsets, union) from (N, L) scores, the union of at most k samples (the
    rule is in the module docstring). NaN scores are never picked. Each layer's subset is in
    its pick order; the union is in order of first pick. ``draw``: ``choose``'s uniforms,
    layer by layer."""
    if not 0.0 < layer_share <= 1.0:
        raise ValueError(f"layer_share must be in (0, 1], got {layer_share}")
    n, L = scores.shape
    if k < 1:
        raise ValueError(f"the budget must be at least one sample, got {k}")
    # each layer's full preference order (a complete draw without replacement)
    draw = uniform_source(draw)
    orders = [choose(scores[:, j], n, rule, temperature, draw) for j in range(L)]
    n_ok = min((len(o) for o in orders), default=0)
    k = min(k, n_ok)
    want = max(1, round(layer_share * k)) if k else 0
    subsets: list[list[int]] = [[] for _ in range(L)]
    pos = [0] * L
    union: list[int] = []
    in_union: set[int] = set()
    r = 0
    while k and (len(union) < k or min(len(x) for x in subsets) < want):
        moved = False
        for j in [(r + i) % L for i in range(L)]:  # rotate who picks first in a round
            order = orders[j]
            while pos[j] < len(order):
                cand = order[pos[j]]
                pos[j] += 1
                if cand in in_union or len(union) < k:
                    break
            else:
                continue  # this layer has nothing left it may take
            subsets[j].append(cand)
            moved = True
            if cand not in in_union:
                in_union.add(cand)
                union.append(cand)
        r += 1
        if not moved:
            break
    return subsets, union


def batch_layer_picks(scores: np.ndarray, layer_share: float = DEFAULT_LAYER_SHARE,
                      temperature: float = 1.0,
                      generator: Uniforms | np.random.Generator | None = None,
                      ) -> list[list[int]]:
    """For one training batch, per layer the batch rows that layer learns from.

    ``scores`` (B, L): row b's score in layer l, NaN where layer l did not score row b
    (such a row is never drawn for l). Per layer, of its n scored rows in the batch,
    ``max(1, round(layer_share * n))`` are drawn without replacement with probabilities
    ``softmax(z / temperature)``, z the scores standardised within the batch (``choose``,
    rule "sample"); none when n is 0. Returns, per layer, batch positions in draw order.
    ``generator``: the uniforms (``uniform_source``; curator.training.finetune passes
    ``torch_uniforms`` of its torch generator)."""
    if not 0.0 < layer_share <= 1.0:
        raise ValueError(f"layer_share must be in (0, 1], got {layer_share}")
    scores = np.asarray(scores, dtype=float)
    draw = uniform_source(generator)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (batch, layers), got shape {scores.shape}")
    out = []
    for j in range(scores.shape[1]):
        n = int(np.count_nonzero(~np.isnan(scores[:, j])))
        k = max(1, round(layer_share * n)) if n else 0
        out.append(choose(scores[:, j], k, "sample", temperature, draw) if k else [])
    return out
