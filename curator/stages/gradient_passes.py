"""The model-running halves of DualSFT and GAST: warm-up, gradient statistics and hook
scoring passes, whose arrays the rules in ``curator.selection.dualsft`` and
``curator.selection.gast`` (numpy only) turn into masks, rankings and per-layer subsets;
the torch side of those rules is here (masks over parameter tensors, seeded uniforms).

DualSFT warm-up (on by default, as the reference): the gradients are taken at a copy of the
model trained for ``warmup_steps`` AdamW steps on a ``warmup_fraction`` slice of the pool,
and the original model is the frozen reference of v_prior, which is then non-zero. With no
target set the data utilities are cross-fitted, each fold on its own mask
(``fold_masks``). ``normalize`` "unit": ``<u, g_n> / |g_n|``, |g_n| over the whole scope
from the same hook pass.

GAST with no target set: the support gradient comes from a held-out slice of the pool and
the scores are cross-fitted (``curator.scoring.gradients.crossfit``): no held-out sample is
scored against a support that contains its own gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from curator.models import LoadedModel
from curator.outputs.mask_files import Mask
from curator.records import Sample
from curator.scoring.engine import LOCAL, ScoringEngine
from curator.scoring.gradients import (
    DEFAULT_FOLDS,
    GradientStatistics,
    Grads,
    SampleScores,
    ScopedModule,
    crossfit_folds,
    gradient_statistics,
    heldout_gradients,
    holdout_slice,
    layer_of,
    mean_gradient,
    module_kind,
    resolve_scope,
    scores_by_fold,
    update_direction,
    warmup_copy,
)
from curator.selection.dualsft import allocate_mask, rank_scores, resolve_count, unit_scores
from curator.selection.gast import DEFAULT_LAYER_SHARE, RULES, Uniforms, layer_subsets
from curator.vocabulary import DEFAULT_WARMUP_STEPS, GRADIENT_NORMALIZE


def parameter_mask(phi_param: Mapping[str, torch.Tensor], budget: float, spread: float = 0.0,
                   use_abs: bool = False) -> Mask:
    """``selection.dualsft.allocate_mask`` over parameter tensors, its cells the (layer,
    module kind) pairs of scoring's parameter naming; bool tensors on the CPU."""
    arrays = {k: v.detach().float().cpu().numpy() for k, v in phi_param.items()}
    mask = allocate_mask(arrays, budget, spread, use_abs,
                         cell_of=lambda name: (layer_of(name), module_kind(name)))
    return {k: torch.from_numpy(m) for k, m in mask.items()}


def fold_masks(u_folds: Sequence[Mapping[str, torch.Tensor]], G: Mapping[str, torch.Tensor],
               budget: float, spread: float = 0.0, use_abs: bool = False) -> list[Mask]:
    """One mask per cross-fitting fold: fold k's from ``u_k * G``, where u_k leaves out fold
    k's held-out samples, so no held-out sample's gradient chooses the coordinates its own
    score is read on."""
    return [parameter_mask({k: u[k] * G[k] for k in u}, budget, spread, use_abs)
            for u in u_folds]


def apply_mask_to(direction: Mapping[str, torch.Tensor], mask: Mask) -> Grads:
    """The direction with its coordinates outside the mask set to zero."""
    return {k: v * mask[k].to(v.device, v.dtype) for k, v in direction.items()}


def torch_uniforms(generator: torch.Generator) -> Uniforms:
    """GAST's uniform draws (``selection.gast.choose``) from a seeded torch generator: the
    stream the torch rule drew, so seeded selections stay what they were."""
    return lambda n: torch.rand(n, generator=generator, dtype=torch.float64).numpy()


@dataclass
class DualSFTConfig:
    eta: float = 2e-5  # the fine-tuning learning rate the direction u is built for
    lambda_new: float = 1.0
    lambda_prior: float = 1.0
    second_order: bool = True  # include -0.5 eta^2 c G in u
    tau: float = 2.0  # temperature of the v_prior self-distillation
    confidence: str = "max_prob"  # teacher confidence weighting: max_prob, entropy, uniform
    warmup_steps: int = DEFAULT_WARMUP_STEPS  # >0: score a warmed-up copy, the original as
    # the KL reference (0: no warm-up, v_prior = 0)
    warmup_fraction: float = 0.05  # pool share the warm-up trains on
    warmup_lr: float = 2e-5
    holdout_fraction: float = 0.1  # v_new from this pool slice when there is no target set
    crossfit_folds: int = DEFAULT_FOLDS  # folds scored against the others' held-out slice
    anchor_fraction: float = 0.05  # anchors from this pool slice when none are given
    spread: float = 0.0  # share of the parameter budget spread evenly over (layer, kind) cells
    use_abs: bool = False  # rank parameters by signed phi_param (True: by |phi_param|)
    co_extract: bool = True  # rank data on the masked coordinates only
    normalize: str = "none"  # "unit": data utilities over unit-norm sample gradients
    modules: Sequence[str] | None = None  # glob patterns on module names (default: all linear)
    last_layers: int | None = None
    include_head: bool = False
    batch_size: int = 8  # for v_new, G, c, v_prior
    score_batch_size: int = 16  # for the hook scoring passes
    max_length: int = 1024
    seed: int = 0


@dataclass
class DualSFTResult:
    mask: Mask
    ranking: list[int]  # pool indices, best first (skipped samples last)
    selected: list[int]  # the first data-budget entries of ranking
    scores: np.ndarray  # (N,) the data utilities the ranking uses (masked when co-extracting)
    scores_full: np.ndarray  # (N,) <u, g_n> over the whole scope
    phi_param: Grads
    stats: GradientStatistics = field(repr=False)
    skipped: list[int] = field(default_factory=list)
    norms: np.ndarray | None = None  # (N,) |g_n| when scores were normalised

    def selected_ids(self, pool: Sequence[Sample]) -> list[str]:
        return [pool[i].sample_id for i in self.selected]


def dualsft_select(lm: LoadedModel, pool: Sequence[Sample],
                   targets: Sequence[Sample] | None = None, *,
                   anchors: Sequence[Sample] | None = None,
                   param_budget: float = 0.05, data_budget: int | float = 0.1,
                   config: DualSFTConfig | None = None, reference: nn.Module | None = None,
                   progress: bool = False, engine: ScoringEngine = LOCAL) -> DualSFTResult:
    """Parameter mask and data ranking from one DualSFT pass over ``pool``.

    ``reference``: the frozen model of the KL prior. By default (``config.warmup_steps``
    > 0, as in DualSFT) a copy of ``lm`` is warmed up on a slice of the pool, all gradients
    are taken at that copy, and ``lm`` itself is the reference; with no warm-up the prior
    is zero. The mask is meant for fine-tuning ``lm`` (the original weights).
    ``engine``: where the gradient sums and per-sample scores run. A warmed-up copy
    exists only in this process, so with warm-up every pass runs on the local engine.
    """
    cfg = config or DualSFTConfig()
    if not pool:
        raise ValueError("the pool is empty")
    if isinstance(param_budget, bool) or not 0.0 < float(param_budget) <= 1.0:
        raise ValueError(f"parameter budget must be a fraction in (0, 1], got {param_budget!r}")
    n_data = resolve_count(data_budget, len(pool), "data")
    if targets is not None and len(targets) == 0:
        raise ValueError("the target set is empty; pass None to use a held-out slice of the pool")

    if cfg.normalize not in GRADIENT_NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(GRADIENT_NORMALIZE)}, got "
                         f"{cfg.normalize!r}")
    norms = cfg.normalize == "unit"
    scoring_lm = lm
    if cfg.warmup_steps > 0 and reference is None:
        g = torch.Generator().manual_seed(cfg.seed + 2)
        k = max(1, round(cfg.warmup_fraction * len(pool)))
        warm = [pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist()]
        scoring_lm = warmup_copy(lm, warm, cfg.warmup_steps, cfg.warmup_lr,
                                 seed=cfg.seed, max_length=cfg.max_length)
        reference = lm.model
        engine = LOCAL  # the actors could only load the original weights
    scope = resolve_scope(scoring_lm.model, cfg.modules, cfg.last_layers, cfg.include_head)
    stats = gradient_statistics(
        scoring_lm, pool, targets, anchors, reference, scope, cfg.holdout_fraction,
        cfg.anchor_fraction, cfg.tau, cfg.confidence, cfg.batch_size, cfg.max_length, cfg.seed,
        cfg.crossfit_folds, engine=engine)

    def score(direction: Grads, with_norms: bool = False) -> SampleScores:
        return engine.sample_scores(scoring_lm, pool, direction, scope, cfg.score_batch_size,
                                    cfg.max_length, progress, with_norms)
    u = update_direction(stats, cfg.eta, cfg.lambda_new, cfg.lambda_prior, cfg.second_order)
    phi_param = {k: u[k] * stats.G[k] for k in u}
    mask = parameter_mask(phi_param, param_budget, cfg.spread, cfg.use_abs)

    if stats.folds:  # no target set: fold k is scored against u built without its held-out
        us = [update_direction(stats, cfg.eta, cfg.lambda_new, cfg.lambda_prior,
                               cfg.second_order, v_new=v) for v in stats.v_new_folds]
        full: SampleScores = scores_by_fold(scoring_lm, pool, us, stats.folds, scope,
                                            cfg.score_batch_size, cfg.max_length, progress,
                                            engine=engine, norms=norms)
        scores = full.total
        if cfg.co_extract:  # each fold on its own mask (fold_masks), one at a time
            masked_us = [apply_mask_to(d, fold_masks([d], stats.G, param_budget, cfg.spread,
                                                     cfg.use_abs)[0]) for d in us]
            del us
            scores = scores_by_fold(scoring_lm, pool, masked_us, stats.folds, scope,
                                    cfg.score_batch_size, cfg.max_length,
                                    progress, engine=engine).total
    else:
        full = score(u, norms)
        scores = full.total
        if cfg.co_extract:
            scores = score(apply_mask_to(u, mask)).total
    full_total = full.total
    if norms:
        full_total = unit_scores(full.total, full.norms)
        scores = unit_scores(scores, full.norms)
    ranking = rank_scores(scores)
    n_ok = len(pool) - len(full.skipped)
    selected = ranking[:min(n_data, n_ok)]
    # TODO(selection): optional submodular pick over gradient features via
    # curator.selection (not available when this was written); top-k for now.
    return DualSFTResult(mask, ranking, selected, scores,
                         full_total, {k: v.cpu() for k, v in phi_param.items()}, stats,
                         full.skipped, full.norms)


@dataclass
class GASTResult:
    layer_subsets: dict[str, list[int]]  # layer name -> pool indices (in pick order)
    layers: list[str]
    scores: np.ndarray  # (N, L) <g_n^l, s^l>; NaN rows for skipped samples
    skipped: list[int] = field(default_factory=list)
    union: list[int] = field(default_factory=list)  # every sample some layer trains on
    support: str = ""  # where the support gradient came from (for the selection record)

    def subsets_by_id(self, pool: Sequence[Sample]) -> dict[str, list[str]]:
        return {layer: [pool[i].sample_id for i in idx]
                for layer, idx in self.layer_subsets.items()}


def gast_select(lm: LoadedModel, pool: Sequence[Sample], targets: Sequence[Sample] | None,
                budget: int | float = 0.3, rule: str = "sample", temperature: float = 1.0,
                seed: int = 0, scope: Sequence[ScopedModule] | None = None,
                batch_size: int = 8, score_batch_size: int = 16, max_length: int = 1024,
                holdout_fraction: float = 0.1, progress: bool = False,
                layer_share: float = DEFAULT_LAYER_SHARE,
                n_folds: int = DEFAULT_FOLDS, engine: ScoringEngine = LOCAL) -> GASTResult:
    """Per-layer subsets of ``pool`` aligned with ``targets``, whose union is ``budget``
    samples (``layer_subsets``).

    ``targets`` None: the support gradient comes from a seeded held-out slice of the pool,
    cross-fitted over ``n_folds`` folds. Layers are transformer blocks; scoped modules
    outside them (a head) form "(other)". ``engine``: where the gradient sums and
    per-sample scores run.
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
        holdout = holdout_slice(len(pool), holdout_fraction, seed)
        if len(holdout) < 2:
            raise ValueError("a pool of one sample needs a target set")
        folds = crossfit_folds(len(pool), holdout, n_folds, seed)
        _, supports, n_support = heldout_gradients(lm, pool, holdout, folds, scope,
                                                   batch_size, max_length, engine)
        scored = scores_by_fold(lm, pool, supports, folds, scope, score_batch_size,
                                max_length, progress, engine=engine)
        source = (f"held-out slice of the pool ({n_support} samples), cross-fitted over "
                  f"{len(folds)} folds")
    else:
        support, n_support = mean_gradient(lm, targets, scope, batch_size, max_length, engine)
        scored = engine.sample_scores(lm, pool, support, scope, score_batch_size, max_length,
                                      progress)
        source = f"mean gradient of the target set ({n_support} samples)"
    layers, per_layer = scored.per_layer()
    gen = torch.Generator().manual_seed(seed)
    picked, union = layer_subsets(per_layer, k, rule, temperature, layer_share,
                                  torch_uniforms(gen))
    subsets = dict(zip(layers, picked, strict=True))
    return GASTResult(subsets, layers, per_layer, scored.skipped, union, source)
