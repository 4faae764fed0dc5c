"""DualSFT: a parameter mask and a data subset from one gradient interaction matrix.

``M[n, p] = u[p] * g_n[p]``; its column sums ``phi_param = u * G`` rank parameters, its row
sums ``phi_data[n] = <u, g_n>`` rank samples (computed by hooks, never forming M).
Co-extraction re-scores the samples on the masked coordinates only (``u * mask``), so the
subset is the data that helps the parameters that will actually be trained.

Mask allocation rule (``allocate_mask``), for a budget fraction rho over the scope's N
coordinates, ranking by the *rank score*: signed phi_param by default (``use_abs=False``,
as the reference: a coordinate with phi < 0 is predicted to RAISE the validation loss when
trained, so it must not outrank one with a smaller positive phi), or |phi_param|:
1. K = max(1, round(rho * N)) coordinates are selected in total, exactly.
2. A share ``spread`` of K (floor(spread * K)) is divided evenly over *cells*, one cell per
   (layer, module kind) pair, e.g. ("model.layers.3", "self_attn.q_proj"); weight and bias
   of a module share a cell. Water-filling: cells are visited from smallest to largest, each
   takes floor(remaining / cells left) but never more than its size, so a small cell's
   unused quota passes to larger ones. Each cell keeps its own top entries by rank score.
3. The rest of K goes to the global top by rank score among coordinates not yet selected.
So every layer and module kind gets at least its even share of ``spread * K`` (when it has
that many coordinates), and the remainder follows the scores. ``spread`` is 0 by default
(the reference's quotas are off by default): a plain global top-K.

With no target set, data utilities are cross-fitted (``curator.scoring.gradients.crossfit``):
each fold of the pool is scored against the direction u_k built from the other folds'
held-out samples, so no held-out sample is scored against its own gradient. Co-extraction
masks fold k's direction with fold k's own mask, allocated from ``u_k * G``
(``fold_masks``): a mask built from the whole slice's u would let a held-out sample's own
gradient choose the coordinates its score is read on. The mask that is stored and trained
(a parameter ranking, not a per-sample score) uses u from the whole held-out slice.

Warm-up (on by default, as the reference): the gradients are taken at a copy of the model
trained for ``warmup_steps`` AdamW steps on a ``warmup_fraction`` slice of the pool, and
the original model is the frozen reference of v_prior, which is then non-zero.

``normalize`` "unit": data utilities ``<u, g_n> / |g_n|`` (|g_n| over the whole scope, from
the same hook pass), so short and high-loss samples, whose gradients are large, are not
favoured for their norm alone (LESS normalises for this reason); the mask is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from curator.budget import parse_budget
from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.gradients import (
    DEFAULT_FOLDS,
    GradientStatistics,
    Grads,
    SampleScores,
    gradient_statistics,
    hook_scores,
    layer_of,
    module_kind,
    resolve_scope,
    scores_by_fold,
    update_direction,
    warmup_copy,
)
from curator.vocabulary import DEFAULT_WARMUP_STEPS, GRADIENT_NORMALIZE

Mask = dict[str, torch.Tensor]


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


def resolve_count(budget: int | float | str, n: int, what: str) -> int:
    """``parse_budget`` (a count, a fraction in (0, 1] or a percentage of n) with errors that
    say which budget was wrong. An int 1 is one sample, a float 1.0 the whole pool."""
    try:
        return parse_budget(budget, n)
    except ValueError as exc:
        raise ValueError(f"{what} budget: {exc}") from None


def _topk_into(mask: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """Set the k highest-scoring unselected entries of a flat mask (in place)."""
    if k <= 0:
        return
    work = score.masked_fill(mask, -torch.inf)
    mask[torch.topk(work, k).indices] = True


def allocate_mask(phi_param: Mapping[str, torch.Tensor], budget: float, spread: float = 0.0,
                  use_abs: bool = False) -> Mask:
    """Top-phi_param mask (signed by default; ``use_abs``: by |phi_param|), optionally
    with a share ``spread`` of the budget spread evenly over (layer, kind) cells (the rule
    is in the module docstring). Exactly K = max(1, round(budget * N)) coordinates are
    selected."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    names = list(phi_param)
    if not names:
        raise ValueError("phi_param is empty")
    sizes = [phi_param[n].numel() for n in names]
    N = sum(sizes)
    if isinstance(budget, bool) or not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"parameter budget must be a fraction in (0, 1], got {budget!r}")
    K = max(1, min(N, round(float(budget) * N)))

    # One flat score vector over the scope (fp32 on CPU); -inf marks "taken". Signed scores
    # are ranked as they are (no shift to make them non-negative: tiny phi values would lose
    # their order in fp32 next to a large negative minimum).
    flat = torch.cat([phi_param[n].detach().float().reshape(-1).cpu() for n in names])
    flat = torch.nan_to_num(flat, nan=0.0)  # +-inf -> +-max float: -inf only marks taken
    score = flat.abs() if use_abs else flat
    taken = torch.zeros(N, dtype=torch.bool)
    offsets = np.cumsum([0] + sizes)

    cells: dict[tuple[str, str], list[int]] = {}
    for i, n in enumerate(names):
        cells.setdefault((layer_of(n), module_kind(n)), []).append(i)
    cell_idx = {key: torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members])
                for key, members in cells.items()}
    remaining = int(spread * K)
    order = sorted(cell_idx, key=lambda key: (cell_idx[key].numel(), key))
    for j, key in enumerate(order):
        idx = cell_idx[key]
        take = min(remaining // (len(order) - j), idx.numel())
        if take > 0:
            taken[idx[torch.topk(score[idx], take).indices]] = True
            remaining -= take
    _topk_into(taken, score, K - int(taken.sum()))

    return {n: taken[offsets[i]:offsets[i + 1]].reshape(phi_param[n].shape)
            for i, n in enumerate(names)}


def fold_masks(u_folds: Sequence[Mapping[str, torch.Tensor]], G: Mapping[str, torch.Tensor],
               budget: float, spread: float = 0.0, use_abs: bool = False) -> list[Mask]:
    """One mask per cross-fitting fold: fold k's from ``u_k * G``, where u_k leaves out fold
    k's held-out samples, so no held-out sample's gradient chooses the coordinates its own
    score is read on."""
    return [allocate_mask({k: u[k] * G[k] for k in u}, budget, spread, use_abs)
            for u in u_folds]


def apply_mask_to(direction: Mapping[str, torch.Tensor], mask: Mask) -> Grads:
    """The direction with its coordinates outside the mask set to zero."""
    return {k: v * mask[k].to(v.device, v.dtype) for k, v in direction.items()}


def unit_scores(scores: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``<u, g_n> / |g_n|``; a zero gradient scores 0; NaN (skipped) stays NaN."""
    norms = np.asarray(norms, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, np.asarray(scores, dtype=float) / norms, 0.0)
    return np.where(np.isnan(scores) | np.isnan(norms), np.nan, out)


def _rank(scores: np.ndarray) -> list[int]:
    """Indices by descending score; NaN (skipped) last; ties by index (stable)."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return [int(i) for i in np.argsort(-key, kind="stable")]


def dualsft_select(lm: LoadedModel, pool: Sequence[Sample],
                   targets: Sequence[Sample] | None = None, *,
                   anchors: Sequence[Sample] | None = None,
                   param_budget: float = 0.05, data_budget: int | float = 0.1,
                   config: DualSFTConfig | None = None, reference: nn.Module | None = None,
                   progress: bool = False, engine: Any = None) -> DualSFTResult:
    """Parameter mask and data ranking from one DualSFT pass over ``pool``.

    ``reference``: the frozen model of the KL prior. By default (``config.warmup_steps``
    > 0, as in DualSFT) a copy of ``lm`` is warmed up on a slice of the pool, all gradients
    are taken at that copy, and ``lm`` itself is the reference; with no warm-up the prior
    is zero. The mask is meant for fine-tuning ``lm`` (the original weights).
    ``engine``: where the gradient sums and per-sample scores run (None: here). A warmed-up
    copy exists only in this process, so with warm-up every pass runs here; so do the
    scoring passes with ``normalize`` "unit".
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
        engine = None
    scope = resolve_scope(scoring_lm.model, cfg.modules, cfg.last_layers, cfg.include_head)
    stats = gradient_statistics(
        scoring_lm, pool, targets, anchors, reference, scope, cfg.holdout_fraction,
        cfg.anchor_fraction, cfg.tau, cfg.confidence, cfg.batch_size, cfg.max_length, cfg.seed,
        cfg.crossfit_folds, engine=engine)
    score_engine = None if norms else engine  # gradient norms are computed here only

    def score(direction: Grads, with_norms: bool = False) -> SampleScores:
        if score_engine is None:
            return hook_scores(scoring_lm, pool, direction, scope, cfg.score_batch_size,
                               cfg.max_length, progress, with_norms)
        return engine.sample_scores(scoring_lm, pool, direction, scope, cfg.score_batch_size,
                                    cfg.max_length)
    u = update_direction(stats, cfg.eta, cfg.lambda_new, cfg.lambda_prior, cfg.second_order)
    phi_param = {k: u[k] * stats.G[k] for k in u}
    mask = allocate_mask(phi_param, param_budget, cfg.spread, cfg.use_abs)

    if stats.folds:  # no target set: fold k is scored against u built without its held-out
        us = [update_direction(stats, cfg.eta, cfg.lambda_new, cfg.lambda_prior,
                               cfg.second_order, v_new=v) for v in stats.v_new_folds]
        full: SampleScores = scores_by_fold(scoring_lm, pool, us, stats.folds, scope,
                                            cfg.score_batch_size, cfg.max_length, progress,
                                            engine=score_engine, norms=norms)
        scores = full.total
        if cfg.co_extract:  # each fold on its own mask (fold_masks), one at a time
            masked_us = [apply_mask_to(d, fold_masks([d], stats.G, param_budget, cfg.spread,
                                                     cfg.use_abs)[0]) for d in us]
            del us
            scores = scores_by_fold(scoring_lm, pool, masked_us, stats.folds, scope,
                                    cfg.score_batch_size, cfg.max_length,
                                    progress, engine=score_engine).total
    else:
        full = score(u, norms)
        scores = full.total
        if cfg.co_extract:
            scores = score(apply_mask_to(u, mask)).total
    full_total = full.total
    if norms:
        full_total = unit_scores(full.total, full.norms)
        scores = unit_scores(scores, full.norms)
    ranking = _rank(scores)
    n_ok = len(pool) - len(full.skipped)
    selected = ranking[:min(n_data, n_ok)]
    # TODO(selection): optional submodular pick over gradient features via
    # curator.selection (not available when this was written); top-k for now.
    return DualSFTResult({k: v.cpu() for k, v in mask.items()}, ranking, selected, scores,
                         full_total, {k: v.cpu() for k, v in phi_param.items()}, stats,
                         full.skipped, full.norms)
