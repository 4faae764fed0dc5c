"""Gradient statistics: v_new, v_prior (KL self-distillation), G, c, the warm-up copy and
the update direction u."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.encoding import collate
from curator.scoring.engine import LOCAL, ScoringEngine
from curator.scoring.gradients.attention import scoring_attention
from curator.scoring.gradients.batching import (
    _device_of,
    _max_len,
    _pad_id,
    encode_samples,
    iter_batches,
)
from curator.scoring.gradients.crossfit import DEFAULT_FOLDS, crossfit_folds, scores_by_fold
from curator.scoring.gradients.hooks import SampleScores
from curator.scoring.gradients.losses import only_grad, response_logits, response_losses
from curator.scoring.gradients.scope import Grads, ScopedModule, resolve_scope, scope_parameters
from curator.scoring.gradients.sums import zeros_like


@dataclass
class GradientStatistics:
    v_new: Grads  # mean gradient of the response loss over the target set (or held-out slice)
    v_prior: Grads  # gradient of the anchor KL self-distillation loss (zero at the frozen model)
    G: Grads  # SUM of per-sample pool gradients
    c: Grads  # mean over pool mini-batches of the squared mini-batch mean gradient
    n_target: int
    n_pool: int
    n_anchor: int
    v_prior_source: str  # "kl to reference model" or "zero (...)": how v_prior was obtained
    holdout: list[int] = field(default_factory=list)  # pool indices used as the target set
    # Cross-fitting (no target set; see curator.scoring.gradients.crossfit): a partition of
    # the pool into folds, and per fold v_new without that fold's held-out samples.
    folds: list[list[int]] = field(default_factory=list)
    v_new_folds: list[Grads] = field(default_factory=list)

    @property
    def v_new_source(self) -> str:
        """How v_new was obtained, for selection records."""
        if not self.holdout:
            return f"mean gradient of the target set ({self.n_target} samples)"
        if self.folds:
            return (f"held-out slice of the pool ({self.n_target} samples), cross-fitted over "
                    f"{len(self.folds)} folds: each sample scored against the other folds' "
                    "held-out gradient")
        return f"held-out slice of the pool ({self.n_target} samples), not cross-fitted"


def mean_gradient(lm: LoadedModel, samples: Sequence[Sample], scope: Sequence[ScopedModule],
                  batch_size: int = 8, max_length: int | None = None,
                  engine: ScoringEngine = LOCAL) -> tuple[Grads, int]:
    """Mean over samples of the gradient of each sample's mean response loss."""
    G, _, n = pool_gradients(lm, samples, scope, batch_size, max_length, curvature=False,
                             engine=engine)
    if n == 0:
        raise ValueError("no sample of the target set fits the context length")
    return {k: v / n for k, v in G.items()}, n


def pool_gradients(lm: LoadedModel, samples: Sequence[Sample], scope: Sequence[ScopedModule],
                   batch_size: int = 8, max_length: int | None = None,
                   curvature: bool = True, engine: ScoringEngine = LOCAL,
                   ) -> tuple[Grads, Grads, int]:
    """(G, c, n): G the sum of per-sample gradients; c the mean over mini-batches of the
    squared mini-batch mean gradient (a diagonal curvature proxy, like Adam's second moment
    but an unweighted average); n the number of samples that fit.

    ``engine`` (``curator.scoring.engine``) computes the sums: both are sums over batches,
    so shards of whole batches add up to the same G and c."""
    G, c, n, n_batches = engine.gradient_sums(lm, samples, scope, batch_size, max_length,
                                              curvature)
    if curvature and n_batches:
        c = {k: v / n_batches for k, v in c.items()}
    return G, c, n


def _confidence(q: torch.Tensor, mode: str) -> torch.Tensor:
    """(n_tok,) teacher confidence per token: max probability or 1 - normalised entropy."""
    if mode == "max_prob":
        return q.max(-1).values
    if mode == "entropy":
        ent = -(q * q.clamp_min(1e-12).log()).sum(-1)
        return 1.0 - ent / math.log(q.shape[-1])
    if mode == "uniform":
        return torch.ones(q.shape[0], device=q.device)
    raise ValueError(f"unknown confidence mode {mode!r}; use max_prob, entropy or uniform")


def kl_prior_gradient(lm: LoadedModel, reference: nn.Module, anchors: Sequence[Sample],
                      scope: Sequence[ScopedModule], tau: float = 2.0,
                      confidence: str = "max_prob", batch_size: int = 8,
                      max_length: int | None = None) -> Grads:
    """Gradient of DualSFT's confidence-weighted self-distillation loss on the anchors.

    Per anchor n: ``KL_n = mean over response tokens of KL(q_tau || p_tau)``, q the frozen
    reference's and p the scored model's next-token distributions at temperature tau;
    ``w_n`` the mean teacher confidence; loss ``tau^2 * sum_n w_n KL_n / sum_n w_n``.
    When the scored model IS the reference the gradient is exactly zero, so it only carries
    information after the scored model has moved (DualSFT scores with a warmed-up model).
    """
    model = lm.model
    params = scope_parameters(model, scope)
    names, plist = list(params), list(params.values())
    acc = zeros_like(params)
    encoded = encode_samples(lm.tokenizer, anchors, _max_len(lm, max_length))
    total_w = 0.0
    ref_device = _device_of(reference)
    with only_grad(model, plist):
        for _, batch in iter_batches(encoded, batch_size, _pad_id(lm.tokenizer), lm.device):
            valid = batch["labels"][:, 1:].ne(-100)  # (B, T-1)
            rows = valid.nonzero(as_tuple=True)[0]
            width = valid.shape[1] + 1
            with torch.no_grad(), scoring_attention(reference, width):
                ref_batch = {k: v.to(ref_device) for k, v in batch.items()}
                t_logits = response_logits(reference, ref_batch, valid.to(ref_device))
                log_q = F.log_softmax(t_logits.to(lm.device).float() / tau, -1)  # (n_tok, V)
                q = log_q.exp()
            with scoring_attention(model, width):
                s_logits = response_logits(model, batch, valid)
            log_p = F.log_softmax(s_logits.float() / tau, -1)
            kl_tok = (q * (log_q - log_p)).sum(-1)  # (n_tok,)
            B = valid.shape[0]
            n_tok = valid.sum(1).clamp_min(1)
            kl = torch.zeros(B, device=lm.device).index_add(0, rows, kl_tok) / n_tok
            w = torch.zeros(B, device=lm.device).index_add(0, rows, _confidence(q, confidence))
            w = w / n_tok
            loss = (w * kl).sum() * tau**2
            grads = torch.autograd.grad(loss, plist, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    acc[name] += g.float()
            total_w += float(w.sum())
    return {k: v / max(total_w, 1e-12) for k, v in acc.items()}


def warmup_copy(lm: LoadedModel, samples: Sequence[Sample], steps: int = 20, lr: float = 2e-5,
                batch_size: int = 4, seed: int = 0, max_length: int | None = None,
                ) -> LoadedModel:
    """A copy of the model after a short AdamW warm-up on ``samples`` (DualSFT's stage 1).

    DualSFT scores with the warmed-up model against the original as the frozen reference,
    which is what makes v_prior (the pull back towards the original) non-zero.
    A bf16/fp16 model's copy is trained and kept in fp32: an AdamW step of a fine-tuning
    learning rate (2e-5) is below half precision's resolution at usual weight scales, so in
    bf16 most weights would not move at all (and the rest by a rounding step).
    """
    model = copy.deepcopy(lm.model)
    half = any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())
    if half:
        model = model.float()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
    ok = [i for i, e in enumerate(encoded) if e is not None]
    if not ok:
        raise ValueError("no warm-up sample fits the context length")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randperm(len(ok), generator=gen)[:batch_size].tolist()
        batch = collate([encoded[ok[i]] for i in pick], _pad_id(lm.tokenizer), lm.device)
        loss = response_losses(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return LoadedModel(model, lm.tokenizer, lm.device, torch.float32 if half else lm.dtype,
                       lm.fingerprint + "+warmup", lm.name + "+warmup")


def _slice(n: int, fraction: float, seed: int, minimum: int = 1) -> list[int]:
    k = max(minimum, min(n, int(round(n * fraction))))
    k = min(k, n)
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def holdout_slice(n: int, fraction: float, seed: int) -> list[int]:
    """The seeded held-out slice that stands in for a target set: ``round(n * fraction)``
    pool indices, at least two when the pool has two (cross-fitting needs two)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("holdout_fraction must be in (0, 1]")
    return _slice(n, fraction, seed, minimum=2)


def heldout_gradients(lm: LoadedModel, pool: Sequence[Sample], holdout: Sequence[int],
                      folds: Sequence[Sequence[int]], scope: Sequence[ScopedModule],
                      batch_size: int = 8, max_length: int | None = None,
                      engine: ScoringEngine = LOCAL) -> tuple[Grads, list[Grads], int]:
    """(v_H, [v_{-k}], n): the mean gradient of the held-out samples, and per fold k the
    mean over the held-out samples outside fold k. One gradient pass per fold's held-out
    part; the fold directions are (total - fold) / (n - n_k)."""
    hset = set(holdout)
    sums: list[Grads] = []
    counts: list[int] = []
    for fold in folds:
        part = [pool[i] for i in fold if i in hset]
        S, _, n = pool_gradients(lm, part, scope, batch_size, max_length, curvature=False,
                                 engine=engine)
        sums.append(S)
        counts.append(n)
    v_new, v_folds = leave_fold_out(sums, counts)
    return v_new, v_folds, sum(counts)


def leave_fold_out(sums: Sequence[Grads], counts: Sequence[int]) -> tuple[Grads, list[Grads]]:
    """From per-fold gradient sums and sample counts: (the mean over all folds, and per
    fold k the mean over the other folds, ``(total - S_k) / (n - n_k)``)."""
    n_total = sum(counts)
    if n_total == 0:
        raise ValueError("no sample of the target set fits the context length")
    total = {k: sum(S[k] for S in sums) for k in sums[0]}
    v_new = {k: v / n_total for k, v in total.items()}
    v_folds = []
    for S, n in zip(sums, counts, strict=True):
        if n_total - n == 0:
            raise ValueError("cross-fitting: every held-out sample that fits the context "
                             "length is in one fold; give a target set or a larger "
                             "holdout_fraction")
        v_folds.append({k: (total[k] - S[k]) / (n_total - n) for k in total})
    return v_new, v_folds


def gradient_statistics(lm: LoadedModel, pool: Sequence[Sample],
                        targets: Sequence[Sample] | None = None,
                        anchors: Sequence[Sample] | None = None,
                        reference: nn.Module | None = None,
                        scope: Sequence[ScopedModule] | None = None,
                        holdout_fraction: float = 0.1, anchor_fraction: float = 0.05,
                        tau: float = 2.0, confidence: str = "max_prob",
                        batch_size: int = 8, max_length: int | None = None,
                        seed: int = 0, n_folds: int = DEFAULT_FOLDS,
                        engine: ScoringEngine = LOCAL,
                        pool_sums: bool = True) -> GradientStatistics:
    """v_new, v_prior, G and c for ``lm`` over ``scope`` (default: all linear layers).

    No target set: v_new is the mean gradient over a seeded held-out slice of the pool
    (``holdout_fraction``); the slice stays in the pool (it is still scored and in G), and
    the pool is split into ``n_folds`` cross-fitting folds with a v_new per fold that
    leaves the fold's own held-out samples out (``stats.folds``, ``stats.v_new_folds``;
    score with ``alignment_scores`` below or ``update_direction(..., v_new=...)``).
    A pool of one sample cannot be cross-fitted: it is scored against its own gradient.
    No anchors: a seeded ``anchor_fraction`` slice of the pool. No ``reference``: the
    reference is ``lm`` itself, so v_prior is zero (and not computed).
    ``engine``: where the gradient sums run; v_prior always runs in this process.
    ``pool_sums`` False: skip G and c (a whole backward pass over the pool) for callers
    that only score against v_new (LESS); they stay empty and ``n_pool`` is 0.
    """
    if not pool:
        raise ValueError("the pool is empty")
    if targets is not None and len(targets) == 0:
        raise ValueError("the target set is empty; pass None to use a held-out slice of the pool")
    if not 0.0 < holdout_fraction <= 1.0 or not 0.0 < anchor_fraction <= 1.0:
        raise ValueError("holdout_fraction and anchor_fraction must be in (0, 1]")
    scope = scope or resolve_scope(lm.model)
    holdout: list[int] = []
    folds: list[list[int]] = []
    v_folds: list[Grads] = []
    if targets is None:
        holdout = holdout_slice(len(pool), holdout_fraction, seed)
        if len(holdout) >= 2:
            folds = crossfit_folds(len(pool), holdout, n_folds, seed)
            v_new, v_folds, n_target = heldout_gradients(lm, pool, holdout, folds, scope,
                                                         batch_size, max_length, engine)
        else:
            v_new, n_target = mean_gradient(lm, [pool[i] for i in holdout], scope,
                                            batch_size, max_length, engine)
    else:
        v_new, n_target = mean_gradient(lm, targets, scope, batch_size, max_length, engine)
    G: Grads = {}
    c: Grads = {}
    n_pool = 0
    if pool_sums:
        G, c, n_pool = pool_gradients(lm, pool, scope, batch_size, max_length, engine=engine)
    if anchors is None:
        anchors = [pool[i] for i in _slice(len(pool), anchor_fraction, seed + 1)]
    if reference is None or reference is lm.model:
        v_prior = {k: torch.zeros_like(v) for k, v in v_new.items()}
        source = "zero (scored model is the frozen reference; warm up first for a non-zero prior)"
    else:
        v_prior = kl_prior_gradient(lm, reference, anchors, scope, tau, confidence,
                                    batch_size, max_length)
        source = f"kl to reference model (tau={tau}, confidence={confidence})"
    return GradientStatistics(v_new, v_prior, G, c, n_target, n_pool, len(anchors), source,
                              holdout, folds, v_folds)


def update_direction(stats: GradientStatistics, eta: float = 2e-5, lambda_new: float = 1.0,
                     lambda_prior: float = 1.0, second_order: bool = True,
                     v_new: Mapping[str, torch.Tensor] | None = None) -> Grads:
    """``u = eta (lambda_new v_new + lambda_prior v_prior) - 0.5 eta^2 c G``.

    <u, g> predicts how much a step of size eta along -g lowers the validation objective;
    the second-order term is the diagonal-curvature penalty of the pool's whole step.
    ``v_new``: use this instead of ``stats.v_new`` (a cross-fitting fold's direction).
    """
    u: Grads = {}
    for name, vn in (stats.v_new if v_new is None else v_new).items():
        d = eta * (lambda_new * vn + lambda_prior * stats.v_prior[name])
        if second_order:
            d = d - 0.5 * eta**2 * stats.c[name] * stats.G[name]
        u[name] = d
    return u


def alignment_scores(lm: LoadedModel, samples: Sequence[Sample], stats: GradientStatistics,
                     scope: Sequence[ScopedModule], batch_size: int = 16,
                     max_length: int | None = None, progress: bool = False,
                     engine: ScoringEngine = LOCAL) -> SampleScores:
    """``<v_new, g_n>`` for every sample of the pool the statistics were computed on;
    cross-fitted (``v_{-k}`` for fold k) when v_new came from a held-out slice.
    ``engine``: where the per-sample scores run."""
    if stats.folds:
        return scores_by_fold(lm, samples, stats.v_new_folds, stats.folds, scope, batch_size,
                              max_length, progress, engine)
    return engine.sample_scores(lm, samples, stats.v_new, scope, batch_size, max_length,
                                progress)
