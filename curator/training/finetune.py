"""Masked and layer-subset fine-tuning on the response-token loss.

Masks: a gradient hook zeroes the masked-out coordinates of each partly selected tensor;
tensors with no selected entry (or not named by the mask) get requires_grad=False, so they
get no gradient and no optimizer state. Masked tensors get no weight decay: AdamW's decay
would move frozen coordinates. With zero gradient and no decay, AdamW's update of a frozen
coordinate is exactly 0, so frozen weights stay bit-identical.

Layer-wise subsets (GAST): the loss is the batch mean of per-sample losses, so activation
gradients flow through the whole network as usual, but the *parameter* gradient of layer l
only sums over layer l's own samples in the batch. Each module owning trainable parameters
in layer l runs through a wrapper that keeps the input gradient unchanged and scales row n
of the output gradient by ``r_n = B / |S_l & batch| * [n in S_l]`` before it meets the
parameters, so layer l's gradient is the mean over its own samples in the batch (zero when
it has none). Linear / Conv1D use a custom autograd function (no extra compute); other
modules (norms) use ``f(x; sg(W)) + r * (f(sg(x); W) - sg(f(sg(x); W)))``, whose value is
exactly ``f(x; W)``. Parameters outside every layer key get the ordinary batch-mean
gradient over the union ("union") or stay frozen ("frozen"). With per-layer scores
(``layer_scores``, GAST's per-batch sampling) a layer's rows are drawn anew in every batch
from the batch rows it scored instead of being a fixed subset.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# training's eval: the one loss loop (curator.training.evaluate.row_losses), re-exported here
from curator.config import TRAIN_DEFAULTS as _D
from curator.models import LoadedModel, pad_token_id
from curator.outputs.mask_files import validate_mask
from curator.records import Sample
from curator.scoring.encoding import collate, length_groups
from curator.scoring.gradients import (
    CONV1D,
    OTHER_LAYER,
    batch_losses,
    encode_samples,
    response_losses,
)
from curator.training.evaluate import eval_loss as eval_loss

# ---------------------------------------------------------------- masks


class MaskHandle:
    """Undo apply_mask: remove the gradient hooks and restore requires_grad."""

    def __init__(self, hooks: list, saved: list[tuple[nn.Parameter, bool]]):
        self._hooks, self._saved = hooks, saved

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for p, flag in self._saved:
            p.requires_grad_(flag)
        self._hooks, self._saved = [], []


def _mask_by_param(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """id(parameter) -> bool mask; tied weights may be named by either of their names."""
    validate_mask(mask, model)
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[int, torch.Tensor] = {}
    for name, m in mask.items():
        key = id(params[name])
        if key in out and not torch.equal(out[key], m.to(out[key].device)):
            raise ValueError(f"the mask names a tied weight twice with different values ({name!r})")
        out[key] = m.to(params[name].device)
    return out


def apply_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> MaskHandle:
    """Restrict training to the mask's True coordinates (see the module docstring)."""
    by_param = _mask_by_param(model, mask)
    hooks, saved = [], []
    for p in model.parameters():  # each tied weight once
        saved.append((p, p.requires_grad))
        m = by_param.get(id(p))
        if m is None or not bool(m.any()):
            p.requires_grad_(False)
        elif not bool(m.all()):
            frozen = ~m
            hooks.append(p.register_hook(lambda g, frozen=frozen: g.masked_fill(frozen, 0)))
    if not any(p.requires_grad for p in model.parameters()):
        handle = MaskHandle(hooks, saved)
        handle.remove()
        raise ValueError("the mask selects no parameter: nothing would train")
    return MaskHandle(hooks, saved)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0,
                    mask: Mapping[str, torch.Tensor] | None = None,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad. Decay only on fully trainable matrices:
    never on partly masked tensors (it would move frozen coordinates), nor on biases and
    norms (ndim < 2), as usual."""
    partial = set()
    if mask is not None:
        by_param = _mask_by_param(model, mask)
        partial = {k for k, m in by_param.items() if not bool(m.all())}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in partial or p.ndim < 2 else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no parameter requires grad: nothing to optimise")
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel: the same update (to float rounding) in one pass over the state.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas,
                             fused=fused or None)


# ---------------------------------------------------------------- layer-wise gradients


class _RowWeightedLinear(torch.autograd.Function):
    """y = x W^T + b, whose weight/bias gradients weight output-gradient row n by r[n]."""

    @staticmethod
    def forward(ctx, x, weight, bias, r):
        ctx.save_for_backward(x, weight, r)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, r = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dy @ weight  # (B, T, in): unweighted, earlier layers see every sample
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            dyr = dy * r.view(-1, *([1] * (dy.dim() - 1))).to(dy.dtype)
            dyr2 = dyr.reshape(-1, dy.shape[-1])  # (B*T, out)
            if ctx.needs_input_grad[1]:
                dw = dyr2.t() @ x.reshape(-1, x.shape[-1])  # (out, in)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = dyr2.sum(0)
        return dx, dw, db, None


def layer_key(module_name: str, keys: Sequence[str] | Mapping[str, object]) -> str | None:
    """The longest layer key that is the module or one of its parents; OTHER_LAYER (when a
    key) for modules under no other key; None when nothing matches."""
    best = None
    keys = list(keys)
    for key in keys:
        if key == OTHER_LAYER:
            continue
        if (module_name == key or module_name.startswith(key + ".")) and (
                best is None or len(key) > len(best)):
            best = key
    if best is None and OTHER_LAYER in keys:
        return OTHER_LAYER
    return best


class LayerRowWeights:
    """Wraps the forwards of modules owning trainable parameters under the given layer keys
    so their parameter gradients weight sample rows per layer (see the module docstring).

    Use: ``with LayerRowWeights(model, subsets) as lw: lw.set_batch(idx); loss.backward()``
    where ``subsets`` maps a layer key ("model.layers.3", or OTHER_LAYER for modules outside
    the blocks) to a set of sample indices and ``idx`` are the batch rows' sample indices.
    """

    def __init__(self, model: nn.Module, subsets: Mapping[str, set[int]]):
        self.model = model
        self.subsets = {k: set(v) for k, v in subsets.items()}
        self.rows: dict[str, torch.Tensor] = {}
        self._wrapped: list[nn.Module] = []
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            key = self.key_of(name)
            if key is None:
                continue
            if isinstance(module, nn.Embedding) and module is not emb:
                continue  # position embeddings: output has no batch dim; left unweighted
            self._wrap(module, key)

    def key_of(self, module_name: str) -> str | None:
        return layer_key(module_name, self.subsets)

    def set_batch(self, idx: Sequence[int], device: torch.device,
                  picked: Mapping[str, set[int]] | None = None) -> None:
        """Row weights for a batch of sample indices ``idx``; ``picked`` (GAST per-batch
        sampling) gives each layer's rows for this batch instead of its fixed subset."""
        B = len(idx)
        for key, members in self.subsets.items():
            if picked is not None:
                members = picked.get(key, set())
            hit = torch.tensor([i in members for i in idx], dtype=torch.float32)
            n = int(hit.sum())
            self.rows[key] = (hit * (B / n) if n else hit).to(device)

    def _wrap(self, module: nn.Module, key: str) -> None:
        rows = self.rows

        def row_weights(y: torch.Tensor) -> torch.Tensor:
            r = rows[key]
            if y.shape[0] != r.shape[0]:
                raise RuntimeError(f"module output batch {y.shape[0]} != batch {r.shape[0]}")
            return r

        if isinstance(module, nn.Linear):
            def forward(self, x):
                r = row_weights(x)
                return _RowWeightedLinear.apply(x, self.weight, self.bias, r)
        elif CONV1D is not None and isinstance(module, CONV1D):
            def forward(self, x):
                r = row_weights(x)
                return _RowWeightedLinear.apply(x, self.weight.t(), self.bias, r)
        else:
            original = type(module).forward

            def forward(self, x, *args, **kwargs):
                held = dict(self._parameters)
                try:  # input path: same function with detached parameters
                    for k, p in held.items():
                        if p is not None:
                            self._parameters[k] = p.detach()
                    y_in = original(self, x, *args, **kwargs)
                finally:
                    self._parameters.update(held)
                y_w = original(self, x.detach(), *args, **kwargs)  # parameter path
                r = row_weights(y_w).view(-1, *([1] * (y_w.dim() - 1))).to(y_w.dtype)
                return y_in + r * (y_w - y_w.detach())  # value: exactly y_in
        module.forward = types.MethodType(forward, module)
        self._wrapped.append(module)

    def remove(self) -> None:
        for module in self._wrapped:
            del module.forward  # back to the class's forward
        self._wrapped = []

    def __enter__(self) -> LayerRowWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# ---------------------------------------------------------------- training loop


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # batch-mean response loss per step
    optimizer: torch.optim.Optimizer = field(repr=False)
    n_train: int = 0  # samples the batches were drawn from
    # GAST: per layer, the rows it learned from summed over batches (per-batch sampling) or
    # its fixed subset's size (static subsets); empty without layers
    layer_rows: dict[str, int] = field(default_factory=dict)
    layer_sampling: str | None = None  # "batch" or "static" (None: no layers)


def _unpack(lm_or_model: LoadedModel | nn.Module, tokenizer: object | None,
            ) -> tuple[nn.Module, object, int]:
    if isinstance(lm_or_model, LoadedModel):
        return lm_or_model.model, tokenizer or lm_or_model.tokenizer, lm_or_model.max_length
    if tokenizer is None:
        raise ValueError("pass a tokenizer with a bare model")
    from curator.models import context_length

    return lm_or_model, tokenizer, context_length(lm_or_model)


def _indices(values: Sequence[int | str], samples: Sequence[Sample], layer: str) -> set[int]:
    by_id = {s.sample_id: i for i, s in enumerate(samples)}
    out = set()
    for v in values:
        if isinstance(v, str):
            if v not in by_id:
                raise ValueError(f"layer {layer!r} names sample id {v!r}, which is not in samples")
            out.add(by_id[v])
        else:
            if not 0 <= int(v) < len(samples):
                raise ValueError(f"layer {layer!r} names sample index {v}, out of range")
            out.add(int(v))
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def train(lm_or_model: LoadedModel | nn.Module, tokenizer: object | None,
          samples: Sequence[Sample], mask: Mapping[str, torch.Tensor] | None = None,
          layer_subsets: Mapping[str, Sequence[int | str]] | None = None,
          steps: int | None = None, epochs: int = _D.epochs, lr: float = _D.lr,
          batch_size: int = _D.batch_size, seed: int = _D.seed, weight_decay: float = 0.0,
          max_length: int = _D.max_length,
          outside_layers: str = "union", max_grad_norm: float | None = None,
          progress: bool | Callable[[int, int, float], None] = False,
          layer_scores: Mapping[str, Mapping[int | str, float]] | None = None,
          layer_share: float = 0.5, temperature: float = 1.0,
          unpad: bool | None = None) -> TrainResult:
    """Fine-tune on the response-token loss (batch mean of per-sample mean losses).

    ``mask``: train only its True coordinates. ``layer_subsets``: layer key -> sample
    indices or ids; batches come from the union, each layer learns from its own samples
    only; parameters outside every key follow ``outside_layers`` ("union" or "frozen").
    ``steps`` overrides ``epochs``. ``progress``: True for a bar, or a callback
    (step, total, loss). The model is left in eval mode, trained in place.
    ``layer_scores`` (GAST per-batch sampling, as the paper): layer key -> {sample index or
    id: score}; batches come from the union of ``layer_subsets`` (or of the scored rows
    without them) and in every batch each layer learns from rows drawn from the batch rows
    it scored (``curator.selection.gast.batch_layer_picks`` with ``layer_share`` and
    ``temperature``); ``layer_subsets`` then only bound the union.
    ``unpad``: run each batch as length-sorted micro-batches (``length_groups``) and sum
    their gradients: the same gradient, since the loss is a mean of per-row means and rows
    do not interact, without computing padding (dropout, where a model has it, draws other
    masks). Default: on a CPU, where a padded token costs as much as a real one (on a GPU
    a wide batch is nearly free). GAST batches stay whole (their per-layer row weights are
    set per batch).
    """
    model, tok, ctx = _unpack(lm_or_model, tokenizer)
    if not samples:
        raise ValueError("no training samples")
    if lr <= 0 or batch_size < 1 or epochs < 1 or (steps is not None and steps < 1):
        raise ValueError("lr must be > 0 and batch_size, epochs and steps >= 1")
    if outside_layers not in ("union", "frozen"):
        raise ValueError(f"outside_layers must be 'union' or 'frozen', got {outside_layers!r}")
    device = next(model.parameters()).device
    encoded = encode_samples(tok, samples, min(max_length, ctx))
    pad = pad_token_id(tok)

    subsets = None
    pool = [i for i, e in enumerate(encoded) if e is not None]
    if layer_subsets is not None:
        subsets = {k: _indices(v, samples, k) for k, v in layer_subsets.items()}
        union = set().union(*subsets.values()) if subsets else set()
        pool = [i for i in sorted(union) if encoded[i] is not None]
    scored = None
    if layer_scores is not None:
        scored = {k: _scored_rows(v, samples, k) for k, v in layer_scores.items()}
        if subsets is None:
            union = set().union(*scored.values()) if scored else set()
            pool = [i for i in sorted(union) if encoded[i] is not None]
        subsets = {k: set(v) for k, v in scored.items()}  # the keys LayerRowWeights wraps
    if not pool:
        raise ValueError("no training sample fits the context length")

    torch.manual_seed(seed)
    handle = apply_mask(model, mask) if mask is not None else None
    frozen_outside: list[tuple[nn.Parameter, bool]] = []
    try:
        if subsets is not None and outside_layers == "frozen" and OTHER_LAYER not in subsets:
            for name, p in model.named_parameters():
                if layer_key(name.rsplit(".", 1)[0], subsets) is None and p.requires_grad:
                    frozen_outside.append((p, True))
                    p.requires_grad_(False)
        opt = build_optimizer(model, lr, weight_decay, mask)
        per_epoch = math.ceil(len(pool) / batch_size)
        total = steps if steps is not None else per_epoch * epochs
        gen = torch.Generator().manual_seed(seed)
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="train")
        losses: list[float] = []
        layered = LayerRowWeights(model, subsets) if subsets is not None else _nothing()
        # the per-batch draws use their own generator: the batch order is the static one's
        pick_gen = torch.Generator().manual_seed(seed + 1)
        layer_rows: dict[str, int] = {}
        if scored is None and subsets is not None:
            layer_rows = {k: len(v) for k, v in subsets.items()}
        split = device.type == "cpu" if unpad is None else unpad
        model.train()
        with layered as lw:
            step = 0
            while step < total:
                order = [pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()]
                for start in range(0, len(order), batch_size):
                    if step >= total:
                        break
                    idx = order[start:start + batch_size]
                    opt.zero_grad(set_to_none=True)
                    if lw is not None:
                        # GAST: its per-layer row weights need the whole batch and the
                        # head's rows of it
                        batch = collate([encoded[i] for i in idx], pad, device)
                        picked = None if scored is None else _batch_picks(
                            idx, scored, layer_share, temperature, pick_gen)
                        lw.set_batch(idx, device, picked)
                        for key, rows in (picked or {}).items():
                            layer_rows[key] = layer_rows.get(key, 0) + len(rows)
                        loss = batch_losses(model, batch).mean()
                        loss.backward()
                        value = float(loss.detach())
                    else:
                        value = _accumulate(model, [encoded[i] for i in idx], pad, device,
                                           split)
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad], max_grad_norm)
                    opt.step()
                    step += 1
                    losses.append(value)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    elif callable(progress):
                        progress(step, total, losses[-1])
        if bar is not None:
            bar.close()
    finally:
        model.eval()
        for p, flag in frozen_outside:
            p.requires_grad_(flag)
        if handle is not None:
            handle.remove()
    sampling = None if subsets is None else "static" if scored is None else "batch"
    return TrainResult(len(losses), losses, opt, len(pool), layer_rows, sampling)


# What one more forward and backward costs, in padded tokens (per-call work; smaller
# matrices use threads less well), so a batch is only split where its padding costs more.
# Rough, from bench/bench_train.py's timings of SmolLM2 on two CPU threads.
MICRO_BATCH_OVERHEAD = 128


def _accumulate(model: nn.Module, rows: Sequence, pad: int, device: torch.device,
                split: bool) -> float:
    """Backpropagate the batch's loss (the mean of its rows' mean response losses), as one
    padded batch or as length-sorted micro-batches whose gradients add up to the same.
    The output head runs on the response positions only (``response_losses``: the head is a
    fifth of SmolLM2's forward and the answer a tenth of a row). Returns the loss."""
    groups = length_groups([len(r.input_ids) for r in rows], MICRO_BATCH_OVERHEAD) \
        if split else [range(len(rows))]
    total = 0.0
    for g in groups:
        part = response_losses(model, collate([rows[i] for i in g], pad, device)).sum()
        part = part / len(rows)
        part.backward()
        total += float(part.detach())
    return total


def _scored_rows(values: Mapping[int | str, float], samples: Sequence[Sample],
                 layer: str) -> dict[int, float]:
    """A layer's {sample id or index: score} as {sample index: score}; non-finite scores
    (a row the layer did not score) are left out."""
    keys = list(values)
    _indices(keys, samples, layer)  # unknown ids and indices out of range are refused
    by_id = {s.sample_id: i for i, s in enumerate(samples)}
    out = {}
    for k in keys:
        v = float(values[k])
        if math.isfinite(v):
            out[by_id[k] if isinstance(k, str) else int(k)] = v
    return out


def _batch_picks(idx: Sequence[int], scored: Mapping[str, Mapping[int, float]],
                 layer_share: float, temperature: float,
                 generator: torch.Generator) -> dict[str, set[int]]:
    """GAST per-batch sampling: per layer, the sample indices of the batch it learns from,
    drawn among the batch rows it scored (``batch_layer_picks``)."""
    import numpy as np

    from curator.selection.gast import batch_layer_picks
    from curator.stages.gradient_passes import torch_uniforms

    keys = list(scored)
    table = np.array([[scored[k].get(i, np.nan) for k in keys] for i in idx], dtype=float)
    picks = batch_layer_picks(table.reshape(len(idx), len(keys)), layer_share, temperature,
                              torch_uniforms(generator))
    return {k: {idx[p] for p in rows} for k, rows in zip(keys, picks, strict=True)}
