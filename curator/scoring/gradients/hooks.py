"""Per-sample scores <u, g_n> from one batched backward pass (hooks), and the exact
per-sample-gradient reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.encoding import collate
from curator.scoring.gradients.batching import (
    _max_len,
    _pad_id,
    encode_samples,
    padding_aware_batches,
)
from curator.scoring.gradients.losses import only_grad, response_losses
from curator.scoring.gradients.scope import (
    OTHER_LAYER,
    Grads,
    ScopedModule,
    layer_of,
    scope_for,
    scope_parameters,
)


@dataclass
class SampleScores:
    total: np.ndarray  # (N,) <u, g_n>; NaN for skipped samples
    per_module: np.ndarray  # (N, M) <u^m, g_n^m> per scoped module
    module_names: list[str]
    skipped: list[int]  # samples whose response does not fit the context length
    # (N,) |g_n| over the whole scope when asked for (``hook_scores(norms=True)``), else None
    norms: np.ndarray | None = None

    def per_layer(self) -> tuple[list[str], np.ndarray]:
        """(layer names, (N, L) scores summed over each layer's modules)."""
        layers = sorted({layer_of(m) for m in self.module_names}, key=_layer_sort_key)
        out = np.zeros((self.total.shape[0], len(layers)))
        pos = {name: i for i, name in enumerate(layers)}
        for j, m in enumerate(self.module_names):
            out[:, pos[layer_of(m)]] += self.per_module[:, j]
        return layers, out


def _layer_sort_key(name: str) -> tuple[int, int]:
    if name == OTHER_LAYER:
        return (1, 0)
    return (0, int(name.rsplit(".", 1)[1]))


# Gather the real (non-padding) tokens before the per-module contraction when padding is
# more than this fraction of a batch's B*T positions: the gather copies cost less than the
# padding rows of the projection matmul they remove.
GATHER_PADDING_FRACTION = 0.1


class _ScoreHooks:
    """Forward hooks that keep each scoped module's input and hang a tensor hook on its
    output; the tensor hook adds ``sum_t delta_t^T U a_t`` per row into ``scores``.

    Per module and batch the contraction is one matmul, ``a @ U^T`` or ``delta @ U``
    (whichever side is narrower, so the temporary is (tokens, min(in, out))), then a
    row-wise dot in fp32 and a sum over each sample's tokens. Padding positions carry
    ``delta = 0``; when they are a sizeable part of the batch only the real tokens enter
    the matmul (``begin(keep=...)``). A head fed only the response positions (see
    :func:`response_logits`) has 2-D (n_tok, .) input and output: its rows are mapped back
    to samples through ``rows``.
    """

    def __init__(self, scope: Sequence[ScopedModule], u: Mapping[str, torch.Tensor],
                 device: torch.device, norms: bool = False):
        self.scores: torch.Tensor | None = None  # (B, M) fp32
        self.norms = norms  # also accumulate |g_n|^2 per sample into ``sq_norms``
        self.sq_norms: torch.Tensor | None = None  # (B,) fp32
        self.keep: torch.Tensor | None = None  # (B, T) bool: tokens entering the contraction
        self.token_rows: torch.Tensor | None = None  # (n_keep,) sample of each kept token
        self.rows: torch.Tensor | None = None  # (n_tok,) sample of each gathered head row
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, its gather)
        self.handles = []
        for m, s in enumerate(scope):
            uw = u.get(s.weight)
            ub = u.get(s.bias) if s.bias is not None else None
            uw = None if uw is None else uw.to(device, torch.float32)
            ub = None if ub is None else ub.to(device, torch.float32)
            if uw is not None and s.kind == "conv1d":
                uw = uw.t()  # Conv1D stores (in, out); work with (out, in) like nn.Linear
            self.handles.append(s.module.register_forward_hook(
                self._make_hook(m, s.kind, uw, ub, s.bias is not None)))

    def begin(self, batch_size: int, device: torch.device, keep: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> None:
        self.scores = torch.zeros(batch_size, len(self.handles), dtype=torch.float32,
                                  device=device)
        self.sq_norms = torch.zeros(batch_size, dtype=torch.float32, device=device) \
            if self.norms else None
        self.keep = keep
        self.token_rows = None if keep is None else keep.nonzero(as_tuple=True)[0]
        self.rows = rows
        self._last = None

    def end(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        scores, sq = self.scores, self.sq_norms
        self.scores = self.sq_norms = self.keep = self.token_rows = self.rows = None
        self._last = None
        return scores, sq

    def _gather(self, a: torch.Tensor) -> torch.Tensor:
        """a[keep], shared by consecutive modules reading the same input (q/k/v, gate/up)."""
        if self._last is not None and self._last[0] is a:
            return self._last[1]
        g = a[self.keep]
        self._last = (a, g)
        return g

    def _make_hook(self, m: int, kind: str, uw: torch.Tensor | None,
                   ub: torch.Tensor | None, has_bias: bool) -> Callable:
        low: dict[torch.dtype, torch.Tensor] = {}  # uw in a half-precision activation dtype

        def weight_in(dtype: torch.dtype) -> torch.Tensor:
            # The (tokens, in) x (in, out) projection is the hook's one big matmul. With
            # bf16/fp16 activations it runs in that dtype (fp32 accumulate inside the matmul,
            # fp32 for the reduction below): the activations and delta already carry only
            # that precision, and fp32 would halve the speed. fp32 models stay fp32.
            if dtype not in (torch.bfloat16, torch.float16):
                return uw
            if dtype not in low:
                low[dtype] = uw.to(dtype)
            return low[dtype]

        def per_token(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            """delta_t^T U a_t (+ delta_t^T u_b) for every token: shape delta.shape[:-1]."""
            out = torch.zeros(delta.shape[:-1], dtype=torch.float32, device=delta.device)
            if uw is not None:
                if kind == "embedding":  # U[ids] is the row each token's gradient lands on
                    out += (delta.float() * uw[a]).sum(-1)
                else:
                    w = weight_in(a.dtype)  # (out, in)
                    # proj is this hook's own temporary, so the fp32 product can be formed
                    # in place in it (or in its fp32 copy); the products of bf16 values are
                    # exact in fp32, so this is the same sum as multiplying two fp32 copies
                    if w.shape[0] <= w.shape[1]:
                        proj = a.to(w.dtype) @ w.t()  # (..., out)
                        out += proj.float().mul_(delta).sum(-1)
                    else:
                        proj = delta.to(w.dtype) @ w  # (..., in)
                        out += proj.float().mul_(a).sum(-1)
            if ub is not None:
                out += (delta.float() * ub).sum(-1)
            return out

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self.scores is None or not output.requires_grad:
                return
            B = self.scores.shape[0]
            a = args[0].detach()
            sq = self.sq_norms
            if output.dim() == 2 and self.rows is not None and output.shape[0] >= len(self.rows):
                rows = self.rows  # the head on gathered response positions (+ zero rows)
                a = a[:len(rows)]

                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m].index_add_(0, rows, per_token(a, delta[:len(rows)]))
                    if sq is not None:
                        sq.add_(_sq_norms_rows(a, delta[:len(rows)], rows, B, kind, has_bias))
            elif output.shape[0] != B:
                raise RuntimeError(f"module output has batch size {output.shape[0]}, expected "
                                   f"{B}: cannot separate samples")
            elif self.keep is not None and output.shape[:2] == self.keep.shape:
                keep, rows = self.keep, self.token_rows
                full = a
                a = self._gather(a)

                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m].index_add_(0, rows, per_token(a, delta[keep]))
                    if sq is not None:  # padding rows carry delta = 0: the padded form is exact
                        sq.add_(_sq_norms_batched(full, delta, kind, has_bias))
            else:
                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m] += per_token(a, delta).reshape(B, -1).sum(1)
                    if sq is not None:
                        sq.add_(_sq_norms_batched(a, delta, kind, has_bias))

            output.register_hook(on_grad)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _gram(a: torch.Tensor, kind: str) -> torch.Tensor:
    """Token-by-token inner products of a module's inputs over the last dimension
    (for an embedding, whose input is token ids: 1 where two tokens are the same id)."""
    if kind == "embedding":
        return (a.unsqueeze(-1) == a.unsqueeze(-2)).float()
    a = a.float()
    return a @ a.transpose(-1, -2)


def _sq_norms_batched(a: torch.Tensor, delta: torch.Tensor, kind: str,
                      has_bias: bool) -> torch.Tensor:
    """(B,) squared norms of each sample's gradient of one module, without forming it:
    ``|sum_t delta_t a_t^T|_F^2 = sum_{t,s} (a_t . a_s)(delta_t . delta_s)`` (the "ghost
    norm"), plus ``|sum_t delta_t|^2`` for the bias. ``a`` (B, T, in) or ids (B, T),
    ``delta`` (B, T, out)."""
    B = delta.shape[0]
    d = delta.float().reshape(B, -1, delta.shape[-1])
    a = a.reshape(B, d.shape[1], *a.shape[2:])
    out = (_gram(a, kind) * (d @ d.transpose(1, 2))).sum((1, 2))
    if has_bias:
        out = out + d.sum(1).pow(2).sum(-1)
    return out


def _sq_norms_rows(a: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor, B: int,
                   kind: str, has_bias: bool) -> torch.Tensor:
    """As ``_sq_norms_batched`` for gathered (n_tok, .) rows, ``rows[i]`` the sample of row i."""
    d = delta.float()
    same = (rows.unsqueeze(1) == rows.unsqueeze(0)).float()
    per_row = (_gram(a, kind) * (d @ d.t()) * same).sum(1)
    out = torch.zeros(B, dtype=torch.float32, device=d.device).index_add_(0, rows, per_row)
    if has_bias:
        s = torch.zeros(B, d.shape[-1], dtype=torch.float32, device=d.device)
        out = out + s.index_add_(0, rows, d).pow(2).sum(-1)
    return out


def _progress(it, enabled: bool, total: int, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc)


@contextmanager
def _leaf_input_embeddings(model: nn.Module) -> Iterator[None]:
    """Make the token embedding's output the one tensor that requires grad (prepended, so
    scope hooks on the embedding see it): with every parameter frozen the backward pass
    then computes activation gradients only, never a weight gradient."""
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda mod, args, out: out.requires_grad_(True),
                                       prepend=True)
    try:
        yield
    finally:
        handle.remove()


def hook_scores(lm: LoadedModel, samples: Sequence[Sample], u: Mapping[str, torch.Tensor],
                scope: Sequence[ScopedModule] | None = None, batch_size: int = 16,
                max_length: int | None = None, progress: bool = False,
                norms: bool = False) -> SampleScores:
    """``<u, g_n>`` for every sample, and per scoped module, from batched backward passes.
    ``norms``: also ``|g_n|`` over the whole scope (``SampleScores.norms``), from the same
    pass (per module a (T, T) Gram product per sample; a weight shared by two scoped
    modules is refused, its cross terms would be missing).

    Per batch: one forward and one backward that computes activation gradients only
    (every parameter frozen; no weight gradient is ever formed), the output head applied
    to response positions only, and per scoped module one projection matmul plus a
    row-wise dot (see ``_ScoreHooks``). Batches hold samples of similar length.

    Memory: one batch's activations (autograd keeps most of them anyway) plus a
    (tokens, min(in, out)) temporary per module; no per-sample gradient is ever formed.
    """
    model = lm.model
    scope = list(scope) if scope is not None else scope_for(model, u)
    N, M = len(samples), len(scope)
    total = np.full(N, np.nan)
    per_module = np.full((N, M), np.nan)
    encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
    skipped = [i for i, e in enumerate(encoded) if e is None]
    sq_norms = np.full(N, np.nan) if norms else None
    if norms:
        weights = [s.weight for s in scope]
        if len(set(weights)) != len(weights):
            raise ValueError("gradient norms: a weight is shared by two scoped modules (tied "
                             "embeddings); leave the head or the embedding out of the scope")
    hooks = _ScoreHooks(scope, u, lm.device, norms)
    was_training = model.training
    model.eval()  # no dropout: scores must be deterministic
    ok = [i for i, e in enumerate(encoded) if e is not None]
    groups = padding_aware_batches([len(encoded[i].input_ids) for i in ok], batch_size)
    pad_id = _pad_id(lm.tokenizer)
    batches = (([ok[g] for g in group], collate([encoded[ok[g]] for g in group], pad_id,
                                                 lm.device)) for group in groups)
    try:
        with only_grad(model, []), _leaf_input_embeddings(model):
            for idx, batch in _progress(batches, progress, len(groups), "gradient scores"):
                mask = batch["attention_mask"].bool()
                padded = 1.0 - float(mask.sum()) / mask.numel()
                valid = batch["labels"][:, 1:].ne(-100)
                hooks.begin(len(idx), lm.device,
                            keep=mask if padded > GATHER_PADDING_FRACTION else None,
                            rows=valid.nonzero(as_tuple=True)[0])
                try:
                    with torch.enable_grad():
                        response_losses(model, batch).sum().backward()
                finally:
                    s, sq = hooks.end()
                    s = s.double().cpu().numpy()
                per_module[idx] = s
                total[idx] = s.sum(1)
                if sq_norms is not None:
                    sq_norms[idx] = sq.double().clamp_min(0).sqrt().cpu().numpy()
    finally:
        hooks.remove()
        model.train(was_training)
    return SampleScores(total, per_module, [s.name for s in scope], skipped, sq_norms)


def per_sample_gradients(lm: LoadedModel, samples: Sequence[Sample],
                         scope: Sequence[ScopedModule],
                         max_length: int | None = None) -> Iterator[Grads | None]:
    """Exact per-sample gradients (one backward per sample, as LESS does). Reference path
    and small sets only: each item is a full gradient over the scope."""
    model = lm.model
    params = scope_parameters(model, scope)
    names, plist = list(params), list(params.values())
    encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
    was_training = model.training
    model.eval()
    try:
        with only_grad(model, plist):
            for e in encoded:
                if e is None:
                    yield None
                    continue
                batch = collate([e], _pad_id(lm.tokenizer), lm.device)
                loss = response_losses(model, batch).sum()
                grads = torch.autograd.grad(loss, plist, allow_unused=True)
                yield {n: (torch.zeros_like(p, dtype=torch.float32) if g is None else g.float())
                       for n, p, g in zip(names, plist, grads, strict=True)}
    finally:
        model.train(was_training)


def exact_scores(lm: LoadedModel, samples: Sequence[Sample], u: Mapping[str, torch.Tensor],
                 scope: Sequence[ScopedModule] | None = None,
                 max_length: int | None = None) -> SampleScores:
    """``<u, g_n>`` from exact per-sample autograd gradients (reference for hook_scores).
    A weight shared by two scoped modules (tied embeddings) is credited to the first."""
    scope = list(scope) if scope is not None else scope_for(lm.model, u)
    N, M = len(samples), len(scope)
    total = np.full(N, np.nan)
    per_module = np.full((N, M), np.nan)
    skipped = []
    for n, g in enumerate(per_sample_gradients(lm, samples, scope, max_length)):
        if g is None:
            skipped.append(n)
            continue
        seen: set[str] = set()
        for m, s in enumerate(scope):
            v = 0.0
            for name in (s.weight, s.bias):
                if name is None or name in seen or name not in u:
                    continue
                seen.add(name)
                # fp32 dot with pairwise summation: ~1e-7 relative, like LESS's fp32 path
                v += float(torch.dot(u[name].to(g[name].device, torch.float32).reshape(-1),
                                     g[name].reshape(-1)))
            per_module[n, m] = v
        total[n] = per_module[n].sum()
    return SampleScores(total, per_module, [s.name for s in scope], skipped)
