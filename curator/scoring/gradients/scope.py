"""Which parameters gradient statistics cover: module naming (layer, kind) and the scope
of linear-like modules."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

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
