"""Attention patching for scoring passes: a fp32 attention for short rows on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from curator.scoring.gradients.batching import _device_of

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
    # fp32 also under autocast (bf16 training on CPU), which would run these matmuls in bf16
    with torch.autocast(query.device.type, enabled=False):
        return _fp32_attention(module, query, key, value, attention_mask, scaling, is_causal)


def _fp32_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    scaling: float | None, is_causal: bool | None) -> tuple[torch.Tensor, None]:
    B, H, T, D = query.shape
    Hkv = key.shape[1]
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
