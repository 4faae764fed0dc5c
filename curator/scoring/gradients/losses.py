"""Per-sample response losses for gradient passes (the head on response positions only)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from curator.scoring.gradients.attention import scoring_attention


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
