"""Gradient statistics and per-sample gradient scores without per-sample gradients.

Everything here works on a *scope*: a list of linear-like modules (``nn.Linear``, GPT-2's
``Conv1D``, and optionally the token embedding) whose parameters the statistics cover.
Directions and statistics are dicts ``parameter name -> fp32 tensor`` shaped like the
parameter.

Per-sample scores ``<U, g_n>`` come from one batched backward pass. For a linear module
``y_t = W a_t + b`` the per-sample weight gradient is ``g_n = sum_t delta_{n,t} a_{n,t}^T``,
so ``<U, g_n> = sum_t delta_{n,t}^T U a_{n,t}`` (+ ``sum_t delta_{n,t}^T u_b``): a forward hook
keeps the module's input ``a`` and a tensor hook on its output receives ``delta``. The loss
of the pass is the SUM over samples of each sample's mean response-token loss, so row n of
``delta`` belongs to sample n alone (samples in a batch never interact in a causal LM with
right padding). Parameters are frozen during that pass: only activation gradients are
needed, which skips the weight-gradient matmuls of an ordinary backward; the contraction
costs the same FLOPs instead (one projection of every token per module), so the gain over a
per-sample loop is batching, not arithmetic (see bench/results/gradients.md). Scoring passes
run the output head on response positions only and, on CPU, short rows through an fp32
attention that beats SDPA's CPU kernel (``response_losses``).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curator.models import LoadedModel
from curator.records import Sample
from curator.scoring.encoding import EncodedSample, collate, encode, length_batches

Grads = dict[str, torch.Tensor]  # parameter name -> fp32 tensor shaped like the parameter

OTHER_LAYER = "(other)"  # layer key for modules outside the repeated transformer blocks
_LAYER_RE = re.compile(r"^(.*?\.(?:layers|layer|h|blocks|block)\.\d+)(?:\.|$)")


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


CONV1D = _conv1d_type()


def layer_of(name: str) -> str:
    """The transformer block a module or parameter belongs to ("model.layers.3"), or
    OTHER_LAYER for embeddings, final norm and head."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else OTHER_LAYER


def module_kind(name: str) -> str:
    """What a module or parameter is inside its block: "self_attn.q_proj", "mlp.down_proj",
    "attn.c_attn"... (GPT-2 has two "c_proj", so the parent name is kept)."""
    if name.endswith(".weight") or name.endswith(".bias"):
        name = name.rsplit(".", 1)[0]
    layer = layer_of(name)
    if layer != OTHER_LAYER:
        return name[len(layer) + 1:] or "block"
    return name


@dataclass(frozen=True)
class ScopedModule:
    name: str  # module name, e.g. "model.layers.0.self_attn.q_proj"
    module: nn.Module = field(repr=False, compare=False)
    kind: str  # "linear" (weight (out, in)), "conv1d" (weight (in, out)), "embedding"
    weight: str  # canonical parameter name of the weight (tied weights: the first name)
    bias: str | None

    @property
    def layer(self) -> str:
        return layer_of(self.name)


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if CONV1D is not None and isinstance(module, CONV1D):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def resolve_scope(model: nn.Module, modules: Sequence[str] | None = None,
                  last_layers: int | None = None, include_head: bool = False,
                  include_embeddings: bool = False) -> list[ScopedModule]:
    """The modules whose parameters gradient statistics cover.

    Default: every ``nn.Linear`` / ``Conv1D`` except the LM head. ``modules``: glob patterns
    on module names ("*.mlp.*"). ``last_layers``: only modules in the last L blocks.
    ``include_head`` / ``include_embeddings`` add the output head / the token embedding;
    when the two share one weight (tied), asking for either adds both, because the weight's
    gradient is the sum of both uses. Position embeddings are never included (their output
    has no batch dimension, so per-sample scores cannot be separated).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and emb is not None and head.weight is emb.weight
    want_head = include_head or (tied and include_embeddings)
    want_emb = include_embeddings or (tied and include_head)
    canonical = {id(p): n for n, p in model.named_parameters()}

    names = [n for n, m in model.named_modules() if _kind(m) is not None]
    blocks = sorted({layer_of(n) for n in names} - {OTHER_LAYER},
                    key=lambda s: int(s.rsplit(".", 1)[1]))
    if last_layers is not None:
        if not 1 <= last_layers <= len(blocks):
            raise ValueError(f"last_layers must be between 1 and {len(blocks)}, got {last_layers}")
        keep_blocks = set(blocks[-last_layers:])

    scope: list[ScopedModule] = []
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is None:
            continue
        if module is head:
            if not want_head:
                continue
        elif module is emb:
            if not want_emb:
                continue
        elif kind == "embedding":
            continue  # position embeddings and the like
        elif last_layers is not None and layer_of(name) not in keep_blocks:
            continue
        if modules is not None and module is not head and module is not emb:
            if not any(fnmatch.fnmatchcase(name, pat) for pat in modules):
                continue
        bias = getattr(module, "bias", None)
        scope.append(ScopedModule(
            name, module, kind, canonical[id(module.weight)],
            canonical[id(bias)] if isinstance(bias, nn.Parameter) else None))
    if not scope:
        raise ValueError("the parameter scope is empty: no linear module matched "
                         f"(modules={modules!r}, last_layers={last_layers!r})")
    return scope


def scope_parameters(model: nn.Module, scope: Sequence[ScopedModule]) -> dict[str, nn.Parameter]:
    """Canonical parameter name -> parameter, each once (tied weights appear once)."""
    params = dict(model.named_parameters())
    out: dict[str, nn.Parameter] = {}
    for s in scope:
        for name in (s.weight, s.bias):
            if name is not None:
                out[name] = params[name]
    return out


def scope_for(model: nn.Module, u: Mapping[str, torch.Tensor]) -> list[ScopedModule]:
    """The hookable modules covering the parameters named in ``u``."""
    everything = resolve_scope(model, include_head=True, include_embeddings=True)
    scope = [s for s in everything if s.weight in u or (s.bias is not None and s.bias in u)]
    covered = {n for s in scope for n in (s.weight, s.bias) if n is not None}
    missing = sorted(set(u) - covered)
    if missing:
        raise ValueError(
            f"{len(missing)} direction tensors are not weights of a linear/Conv1D/embedding "
            f"module of this model (e.g. {missing[0]!r}); hook scoring cannot cover them")
    return scope


# ---------------------------------------------------------------- encoding and batching


def encode_samples(tokenizer: object, samples: Sequence[Sample],
                   max_length: int) -> list[EncodedSample | None]:
    """None for a sample whose response alone does not fit in max_length."""
    return [encode(tokenizer, s.prompt_messages, s.response, max_length) for s in samples]


def _pad_id(tokenizer: object) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def iter_batches(encoded: Sequence[EncodedSample | None], batch_size: int, pad_id: int,
                 device: torch.device) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(sample indices, collated batch), similar lengths together; skipped samples left out."""
    ok = [i for i, e in enumerate(encoded) if e is not None]
    for group in length_batches([len(encoded[i].input_ids) for i in ok], batch_size):
        idx = [ok[g] for g in group]
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


# ---------------------------------------------------------------- losses


def per_sample_response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token loss over each sample's response tokens, in fp32.

    Only the response positions go through the fp32 cross-entropy, so the (B, T, V) logits
    are never copied to fp32 as a whole.
    """
    shift_labels = labels[:, 1:]  # (B, T-1)
    valid = shift_labels.ne(-100)
    rows = valid.nonzero(as_tuple=True)[0]  # (n_tok,) sample of each response token
    picked = logits[:, :-1][valid].float()  # (n_tok, V)
    tok_loss = F.cross_entropy(picked, shift_labels[valid], reduction="none")
    B = labels.shape[0]
    total = torch.zeros(B, dtype=torch.float32, device=logits.device).index_add(0, rows, tok_loss)
    return total / valid.sum(1).clamp_min(1)


def batch_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) per-sample mean response loss of one collated batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                use_cache=False)
    return per_sample_response_loss(out.logits, batch["labels"])


# Short rows on CPU: SDPA's CPU flash kernel is slow in backward (per layer of SmolLM2's
# 9 x 64 heads, 16 x 101 tokens, bf16 inputs, one thread: 55 ms forward + backward against
# 30 ms for _short_row_attention, whose gradients are also closer to fp64: 1.7e-3 relative
# error vs 4-5e-3; HF's own eager attention rounds the scores to bf16: 9e-3). It keeps the
# fp32 (B, H, T, T) probabilities for backward, so only rows up to this width use it;
# longer rows keep the model's own attention (at 8 x 256 tokens flash was as fast).
SHORT_ROW_ATTENTION_MAX_WIDTH = 128
_SHORT_ROW_ATTENTION = "curator_short_rows"


def _short_row_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, attention_mask: torch.Tensor | None,
                         dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention for HF's AttentionInterface, all in fp32 whatever the model's dtype
    (attention is a few % of the FLOPs; bf16 scores would cost accuracy); grouped K/V
    heads are shared by reshaping the queries rather than copying K/V. Anything unusual
    (dropout, caches, soft-capping, sliding windows, float masks) goes to HF's SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, T, D = query.shape
    Hkv = key.shape[1]
    plain = (not dropout and key.shape[2] == T and H % Hkv == 0
             and (attention_mask is None or attention_mask.dtype == torch.bool)
             and all(kwargs.get(k) is None for k in ("position_bias", "cache", "softcap",
                                                      "s_aux", "sliding_window"))
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    g = H // Hkv  # query heads per K/V head, consecutive (as repeat_kv orders them)
    scores = query.float().reshape(B, Hkv, g * T, D) @ key.float().transpose(-1, -2)
    scores = scores.mul_(D ** -0.5 if scaling is None else scaling).view(B, Hkv, g, T, T)
    if attention_mask is not None:  # SDPA format: True = attend, (B or 1, 1, T, T)
        scores = scores.masked_fill(~attention_mask[:, :, None], torch.finfo(torch.float32).min)
    elif T > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, -1).view(B, Hkv, g * T, T)
    out = (probs @ value.float()).to(value.dtype).view(B, H, T, value.shape[-1])
    return out.transpose(1, 2).contiguous(), None


def _register_short_row_attention() -> bool:
    """Register _short_row_attention (and SDPA's mask format for it) with transformers."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # pragma: no cover - older transformers
        return False
    if _SHORT_ROW_ATTENTION not in AttentionMaskInterface._global_mapping:
        AttentionInterface.register(_SHORT_ROW_ATTENTION, _short_row_attention)
        AttentionMaskInterface.register(_SHORT_ROW_ATTENTION, sdpa_mask)
    return True


@contextmanager
def scoring_attention(model: nn.Module, width: int) -> Iterator[None]:
    """For a pass over rows of ``width`` tokens, switch an SDPA model on CPU to
    _short_row_attention where that is faster (short rows); restores the model's own
    implementation afterwards."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    switch = (impl == "sdpa" and width <= SHORT_ROW_ATTENTION_MAX_WIDTH
              and _device_of(model).type == "cpu"
              and hasattr(model, "set_attn_implementation")
              and getattr(model, "_can_set_attn_implementation", lambda: False)()
              and _register_short_row_attention())
    if switch:
        try:
            model.set_attn_implementation(_SHORT_ROW_ATTENTION)
        except (ValueError, ImportError, AttributeError, KeyError):  # pragma: no cover
            switch = False
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(impl)


# Gathered head rows are zero-padded to at least this many: CPU fp32 matmuls with 1-3 rows
# take a kernel that accumulates the head's backward over the 49k-entry vocabulary with
# ~1e-4 relative error (softmax gradients cancel heavily there), against ~1e-6 from 4 rows.
MIN_HEAD_ROWS = 16


def response_logits(model: nn.Module, batch: dict[str, torch.Tensor],
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """(n_tok, V) next-token logits at the response positions only, in the model's dtype.

    ``valid``: (B, T-1) mask of the positions whose next token is a response token (default:
    from ``batch["labels"]``); rows are in ``valid.nonzero()`` order. A forward pre-hook on
    the output head gathers those hidden states before the head, so the (B, T, V) logits are
    never formed: the head's matmul forward and backward shrink from B*T rows to n_tok (on
    t0-style data ~10% of the tokens, and the head is 20% of SmolLM2's forward). Anything
    the model applies after its head (logit scaling, soft-capping) is elementwise and still
    applies. Falls back to slicing full logits when the head cannot be found.
    """
    if valid is None:
        valid = batch["labels"][:, 1:].ne(-100)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    B, W = batch["input_ids"].shape
    gathered = []

    def gather(module: nn.Module, args: tuple) -> tuple | None:
        h = args[0]
        if h.dim() != 3 or h.shape[0] != B or h.shape[1] != W:
            return None  # not the final hidden states (unexpected call): leave it alone
        x = h[:, :-1][valid]
        gathered.append(x.shape[0])
        if x.shape[0] < MIN_HEAD_ROWS:
            x = torch.cat([x, x.new_zeros(MIN_HEAD_ROWS - x.shape[0], x.shape[1])])
        return (x, *args[1:])

    handle = head.register_forward_pre_hook(gather) if isinstance(head, nn.Module) else None
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    logits = out.logits
    if gathered and logits.dim() == 2:
        return logits[:gathered[0]]
    return logits[:, :-1][valid]


def response_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) per-sample mean response loss, like :func:`batch_losses` (same value), but the
    output head only sees response positions and short CPU rows use _short_row_attention."""
    labels = batch["labels"]
    shift_labels = labels[:, 1:]
    valid = shift_labels.ne(-100)
    rows = valid.nonzero(as_tuple=True)[0]
    with scoring_attention(model, labels.shape[1]):
        logits = response_logits(model, batch, valid)
    tok_loss = F.cross_entropy(logits.float(), shift_labels[valid], reduction="none")
    B = labels.shape[0]
    total = torch.zeros(B, dtype=torch.float32, device=logits.device).index_add(0, rows, tok_loss)
    return total / valid.sum(1).clamp_min(1)


@contextmanager
def only_grad(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily let only ``params`` require grad (fewer weight-gradient matmuls)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


# ---------------------------------------------------------------- gradient statistics


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


def _zeros_like(params: Mapping[str, nn.Parameter]) -> Grads:
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for n, p in params.items()}


def mean_gradient(lm: LoadedModel, samples: Sequence[Sample], scope: Sequence[ScopedModule],
                  batch_size: int = 8, max_length: int | None = None) -> tuple[Grads, int]:
    """Mean over samples of the gradient of each sample's mean response loss."""
    G, _, n = pool_gradients(lm, samples, scope, batch_size, max_length, curvature=False)
    if n == 0:
        raise ValueError("no sample of the target set fits the context length")
    return {k: v / n for k, v in G.items()}, n


def pool_gradients(lm: LoadedModel, samples: Sequence[Sample], scope: Sequence[ScopedModule],
                   batch_size: int = 8, max_length: int | None = None,
                   curvature: bool = True) -> tuple[Grads, Grads, int]:
    """(G, c, n): G the sum of per-sample gradients; c the mean over mini-batches of the
    squared mini-batch mean gradient (a diagonal curvature proxy, like Adam's second moment
    but an unweighted average); n the number of samples that fit."""
    model = lm.model
    params = scope_parameters(model, scope)
    G, c = _zeros_like(params), _zeros_like(params)
    names, plist = list(params), list(params.values())
    encoded = encode_samples(lm.tokenizer, samples, _max_len(lm, max_length))
    n = n_batches = 0
    with only_grad(model, plist):
        for idx, batch in iter_batches(encoded, batch_size, _pad_id(lm.tokenizer), lm.device):
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
    acc = _zeros_like(params)
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
    """
    model = copy.deepcopy(lm.model).train()
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
    return LoadedModel(model, lm.tokenizer, lm.device, lm.dtype, lm.fingerprint + "+warmup",
                       lm.name + "+warmup")


def _slice(n: int, fraction: float, seed: int) -> list[int]:
    k = max(1, min(n, int(round(n * fraction))))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def gradient_statistics(lm: LoadedModel, pool: Sequence[Sample],
                        targets: Sequence[Sample] | None = None,
                        anchors: Sequence[Sample] | None = None,
                        reference: nn.Module | None = None,
                        scope: Sequence[ScopedModule] | None = None,
                        holdout_fraction: float = 0.1, anchor_fraction: float = 0.05,
                        tau: float = 2.0, confidence: str = "max_prob",
                        batch_size: int = 8, max_length: int | None = None,
                        seed: int = 0) -> GradientStatistics:
    """v_new, v_prior, G and c for ``lm`` over ``scope`` (default: all linear layers).

    No target set: v_new is the mean gradient over a seeded held-out slice of the pool
    (``holdout_fraction``); the slice stays in the pool (it is still scored and in G).
    No anchors: a seeded ``anchor_fraction`` slice of the pool. No ``reference``: the
    reference is ``lm`` itself, so v_prior is zero (and not computed).
    """
    if not pool:
        raise ValueError("the pool is empty")
    if targets is not None and len(targets) == 0:
        raise ValueError("the target set is empty; pass None to use a held-out slice of the pool")
    if not 0.0 < holdout_fraction <= 1.0 or not 0.0 < anchor_fraction <= 1.0:
        raise ValueError("holdout_fraction and anchor_fraction must be in (0, 1]")
    scope = scope or resolve_scope(lm.model)
    holdout: list[int] = []
    if targets is None:
        holdout = _slice(len(pool), holdout_fraction, seed)
        targets = [pool[i] for i in holdout]
    v_new, n_target = mean_gradient(lm, targets, scope, batch_size, max_length)
    G, c, n_pool = pool_gradients(lm, pool, scope, batch_size, max_length)
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
                              holdout)


def update_direction(stats: GradientStatistics, eta: float = 2e-5, lambda_new: float = 1.0,
                     lambda_prior: float = 1.0, second_order: bool = True) -> Grads:
    """``u = eta (lambda_new v_new + lambda_prior v_prior) - 0.5 eta^2 c G``.

    <u, g> predicts how much a step of size eta along -g lowers the validation objective;
    the second-order term is the diagonal-curvature penalty of the pool's whole step.
    """
    u: Grads = {}
    for name, vn in stats.v_new.items():
        d = eta * (lambda_new * vn + lambda_prior * stats.v_prior[name])
        if second_order:
            d = d - 0.5 * eta**2 * stats.c[name] * stats.G[name]
        u[name] = d
    return u


# ---------------------------------------------------------------- per-sample scores


@dataclass
class SampleScores:
    total: np.ndarray  # (N,) <u, g_n>; NaN for skipped samples
    per_module: np.ndarray  # (N, M) <u^m, g_n^m> per scoped module
    module_names: list[str]
    skipped: list[int]  # samples whose response does not fit the context length

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
                 device: torch.device):
        self.scores: torch.Tensor | None = None  # (B, M) fp32
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
            self.handles.append(s.module.register_forward_hook(self._make_hook(m, s.kind, uw, ub)))

    def begin(self, batch_size: int, device: torch.device, keep: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> None:
        self.scores = torch.zeros(batch_size, len(self.handles), dtype=torch.float32,
                                  device=device)
        self.keep = keep
        self.token_rows = None if keep is None else keep.nonzero(as_tuple=True)[0]
        self.rows = rows
        self._last = None

    def end(self) -> torch.Tensor:
        scores = self.scores
        self.scores = self.keep = self.token_rows = self.rows = self._last = None
        return scores

    def _gather(self, a: torch.Tensor) -> torch.Tensor:
        """a[keep], shared by consecutive modules reading the same input (q/k/v, gate/up)."""
        if self._last is not None and self._last[0] is a:
            return self._last[1]
        g = a[self.keep]
        self._last = (a, g)
        return g

    def _make_hook(self, m: int, kind: str, uw: torch.Tensor | None,
                   ub: torch.Tensor | None) -> Callable:
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
            if output.dim() == 2 and self.rows is not None and output.shape[0] >= len(self.rows):
                rows = self.rows  # the head on gathered response positions (+ zero rows)
                a = a[:len(rows)]

                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m].index_add_(0, rows, per_token(a, delta[:len(rows)]))
            elif output.shape[0] != B:
                raise RuntimeError(f"module output has batch size {output.shape[0]}, expected "
                                   f"{B}: cannot separate samples")
            elif self.keep is not None and output.shape[:2] == self.keep.shape:
                keep, rows = self.keep, self.token_rows
                a = self._gather(a)

                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m].index_add_(0, rows, per_token(a, delta[keep]))
            else:
                def on_grad(delta: torch.Tensor) -> None:
                    self.scores[:, m] += per_token(a, delta).reshape(B, -1).sum(1)

            output.register_hook(on_grad)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


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
                max_length: int | None = None, progress: bool = False) -> SampleScores:
    """``<u, g_n>`` for every sample, and per scoped module, from batched backward passes.

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
    hooks = _ScoreHooks(scope, u, lm.device)
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
                    s = hooks.end().double().cpu().numpy()
                per_module[idx] = s
                total[idx] = s.sum(1)
    finally:
        hooks.remove()
        model.train(was_training)
    return SampleScores(total, per_module, [s.name for s in scope], skipped)


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
