"""Sample embeddings for neighbour search.

Default: the curation model itself, last hidden states, position-weighted mean pooling
(RDS+, Ivison et al. 2025: token t of a sequence gets weight proportional to t + 1, so later
tokens, which have seen more of the sample, count more), L2-normalised. The sample is
embedded as the model sees it in training: prompt and response rendered by the same code the
scorers use (``curator.scoring.encoding``), so the chat template applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from curator.models import LoadedModel, pad_token_id
from curator.records import Sample
from curator.scoring.encoding import encode, length_batches, render, tokenize

POOLING = "rds-position-weighted-mean"
EMBED_VERSION = 1


def embedder_fingerprint(lm: LoadedModel, max_length: int = 512) -> str:
    """Cache key for embeddings: model, pooling, length limit (and this code's version)."""
    return f"{lm.fingerprint}:{POOLING}:L{min(max_length, lm.max_length)}:v{EMBED_VERSION}"


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean of hidden (B, L, d) over right-padded rows with mask (B, L):
    weight of the t-th real token is (t + 1) / sum of (t + 1). Returns fp32 (B, d)."""
    pos = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32)
    w = pos[None, :] * mask.float()  # (B, L); right padding: real tokens are 0..n-1
    w = w / w.sum(1, keepdim=True)
    return torch.einsum("bl,bld->bd", w, hidden.float())


def _sample_ids(lm: LoadedModel, sample: Sample, max_length: int) -> list[int]:
    enc = encode(lm.tokenizer, sample.prompt_messages, sample.response, max_length)
    if enc is not None:
        return list(enc.input_ids)
    # The response alone is longer than max_length: embed the rendered sample's start.
    prompt, response = render(lm.tokenizer, sample.prompt_messages, sample.response)
    return tokenize(lm.tokenizer, prompt + response)[:max_length]


def embed_samples(lm: LoadedModel, samples: Sequence[Sample], *, max_length: int = 512,
                  batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Embed samples with the model: float32 (N, d), rows L2-normalised, in input order."""
    if not samples:
        raise ValueError("no samples to embed")
    max_length = min(max_length, lm.max_length)
    ids = [_sample_ids(lm, s, max_length) for s in samples]
    pad = pad_token_id(lm.tokenizer)
    base = lm.model.base_model
    out: np.ndarray | None = None
    with torch.inference_mode(), tqdm(total=len(samples), unit="sample", desc="embeddings",
                                      disable=not progress) as bar:
        for batch in length_batches([len(x) for x in ids], batch_size):
            width = max(len(ids[i]) for i in batch)
            x = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            x, mask = x.to(lm.device), mask.to(lm.device)
            hidden = base(input_ids=x, attention_mask=mask, use_cache=False).last_hidden_state
            emb = torch.nn.functional.normalize(weighted_mean_pool(hidden, mask), dim=-1)
            if out is None:
                out = np.empty((len(samples), emb.shape[1]), dtype=np.float32)
            out[batch] = emb.cpu().numpy()  # (B, d)
            bar.update(len(batch))
    assert out is not None
    return out
