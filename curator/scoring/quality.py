"""A quality prior from the model's own loss: how plausible each row's answer is for its
own prompt (docs/design-notes.md, "Quality prior").

Per row, over the answer's tokens only (the chat template's end-of-turn tokens excluded):

- ``loss``: the conditional answer loss L(y|x), mean NLL of the answer tokens given the
  prompt, teacher-forced;
- ``uncond_loss``: L(y), the same answer tokens after an empty user turn (the template's
  system prompt and generation prompt kept, so only the prompt's content differs);
- ``ifd = loss / uncond_loss``: instruction-following difficulty (Li et al., NAACL 2024,
  "Cherry LLM"); near or above 1 the prompt does not make the answer likelier, the mark
  of a row whose answer belongs to another prompt. Superfiltering (ACL 2024) finds a
  124M model's IFD ranks rows like a 7B model's;
- ``stop_nll``: the NLL of the first end-of-turn token after the answer (an answer cut
  short makes the model expect more);
- the kNN z-score of ``loss`` among a row's nearest pool rows is computed per pool at
  selection time (``curator.stages.quality``), not stored: it depends on the pool.

Two forwards per row (conditional and unconditional), batched by length, logits only at
the answer and stop positions. ``quality_reference`` is the test oracle: one unpadded
sequence per forward through the whole causal LM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from curator.models import LoadedModel, pad_token_id
from curator.records import Sample
from curator.scoring.encoding import answer_split, has_chat_template, render, tokenize
from curator.scoring.utility import _pad

QUALITY_VERSION = 1
_LOGIT_ROWS = 1024  # positions per lm-head block: bounds the (rows, V) fp32 logits


@dataclass(frozen=True)
class QualityConfig:
    """What changes a row's signals besides the model; hashed into the store's key."""

    max_length: int = 1024

    def config_hash(self, lm: LoadedModel) -> str:
        payload = asdict(self) | {"version": QUALITY_VERSION,
                                  "max_length": min(self.max_length, lm.max_length),
                                  "chat": has_chat_template(lm.tokenizer),
                                  "template": getattr(lm.tokenizer, "chat_template", None),
                                  "dtype": str(lm.dtype)}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class QualityRows:
    """Signals for a list of samples, aligned with ``sample_id`` (NaN where invalid)."""

    sample_id: list[str]
    loss: np.ndarray          # (n,) L(y|x)
    uncond_loss: np.ndarray   # (n,) L(y)
    stop_nll: np.ndarray      # (n,) NaN when the template puts nothing after the answer
    n_answer: np.ndarray      # (n,) int answer tokens
    reason: list[str]         # "" for valid rows

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def valid(self) -> np.ndarray:
        return np.array([r == "" for r in self.reason], dtype=bool)

    @property
    def ifd(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.loss / self.uncond_loss


@dataclass(frozen=True)
class _Laid:
    """One row as token ids: conditional and unconditional sequences, each ending with the
    response; the answer is the first ``n_answer`` response tokens, then ``n_stop`` (0 or 1)
    end-of-turn token is scored."""

    cond: tuple[int, ...]
    uncond: tuple[int, ...]
    n_response: int
    n_answer: int
    n_stop: int
    reason: str


def _lay_out(tok: object, sample: Sample, max_length: int) -> _Laid:
    prompt_text, response_text = render(tok, sample.prompt_messages, sample.response)
    empty = [{"role": "user", "content": ""}]
    # the unconditional prompt: an empty user turn in the same template (the system prompt a
    # template adds by default stays, so only the prompt's content differs)
    uncond_text, _ = render(tok, empty, sample.response)
    response = tokenize(tok, response_text)
    n_answer = answer_split(tok, sample.response, response)
    n_stop = 1 if len(response) > n_answer else 0
    cond = tokenize(tok, prompt_text)
    uncond = tokenize(tok, uncond_text)
    if n_answer == 0:
        return _Laid((), (), 0, 0, 0, "empty answer")
    keep = max_length - len(response)
    if keep < 1 or len(uncond) > keep:
        return _Laid((), (), 0, 0, 0, f"answer does not fit ({len(response)} tokens, "
                                      f"max_length {max_length})")
    cond = cond[-keep:]  # the prompt is cut from the left; the answer never
    return _Laid(tuple(cond + response), tuple(uncond + response), len(response), n_answer,
                 n_stop, "")


def _token_logprobs(lm: LoadedModel, seqs: Sequence[tuple[int, ...]],
                    spans: Sequence[tuple[int, int]], batch_size: int) -> list[np.ndarray]:
    """For each sequence, log p of its tokens at positions [start, end) (teacher-forced),
    right-padded batches of similar length; the lm head only at those positions."""
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    base = lm.model.base_model
    head = lm.model.get_output_embeddings()
    softcap = getattr(lm.model.config, "final_logit_softcapping", None)
    pad = pad_token_id(lm.tokenizer)
    dev = lm.device
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = _pad([seqs[i] for i in idx], pad, dev)  # (B, L) right-padded
        width = ids.shape[1]
        pos = torch.arange(width, device=dev).clamp(max=lm.max_length - 1).expand_as(ids)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos,
                      use_cache=False).last_hidden_state  # (B, L, d)
        rows, cols = [], []
        for r, i in enumerate(idx):
            a, b = spans[i]
            rows += [r] * (b - a)
            cols += range(a - 1, b - 1)  # position p predicts token p + 1
        rows_t = torch.tensor(rows, device=dev)
        cols_t = torch.tensor(cols, device=dev)
        h = hidden[rows_t, cols_t]  # (N, d)
        gold = ids[rows_t, cols_t + 1]
        logp = torch.empty(len(rows), dtype=torch.float32, device=dev)
        for c in range(0, len(rows), _LOGIT_ROWS):
            logits = head(h[c:c + _LOGIT_ROWS]).float()  # (n, V) fp32 for the softmax
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logp[c:c + _LOGIT_ROWS] = logits.log_softmax(-1).gather(
                -1, gold[c:c + _LOGIT_ROWS, None]).squeeze(-1)
        flat = logp.cpu().numpy().astype(np.float64)
        at = 0
        for i in idx:
            n = spans[i][1] - spans[i][0]
            out[i] = flat[at:at + n]
            at += n
    return out


def _rows(samples: Sequence[Sample], laid: Sequence[_Laid],
          cond_lp: Mapping[int, np.ndarray], uncond_lp: Mapping[int, np.ndarray]) -> QualityRows:
    n = len(samples)
    loss, uncond, stop = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i, row in enumerate(laid):
        if row.reason:
            continue
        c, u = cond_lp[i], uncond_lp[i]
        loss[i] = -c[:row.n_answer].mean()
        uncond[i] = -u.mean()
        if row.n_stop:
            stop[i] = -c[row.n_answer]
    reason = [row.reason or ("" if np.isfinite(loss[i]) and np.isfinite(uncond[i])
                             and uncond[i] > 0 else "non-finite loss")
              for i, row in enumerate(laid)]
    return QualityRows([s.sample_id for s in samples], loss, uncond, stop,
                       np.array([row.n_answer for row in laid], dtype=np.int64), reason)


def score_quality(lm: LoadedModel, samples: Sequence[Sample],
                  config: QualityConfig | None = None, *, batch_size: int = 16,
                  progress: bool = False) -> QualityRows:
    """The quality signals of ``samples`` (module docstring), in their order."""
    cfg = config or QualityConfig()
    max_length = min(cfg.max_length, lm.max_length)
    laid = [_lay_out(lm.tokenizer, s, max_length) for s in samples]
    ok = [i for i, row in enumerate(laid) if not row.reason]
    cond_lp: dict[int, np.ndarray] = {}
    uncond_lp: dict[int, np.ndarray] = {}
    step = max(batch_size * 8, 1)
    with torch.inference_mode(), tqdm(total=len(ok), unit="row", disable=not progress,
                                      desc="quality") as bar:
        for s in range(0, len(ok), step):
            part = ok[s:s + step]
            cond = _token_logprobs(
                lm, [laid[i].cond for i in part],
                [(len(laid[i].cond) - laid[i].n_response,
                  len(laid[i].cond) - laid[i].n_response + laid[i].n_answer + laid[i].n_stop)
                 for i in part], batch_size)
            unc = _token_logprobs(
                lm, [laid[i].uncond for i in part],
                [(len(laid[i].uncond) - laid[i].n_response,
                  len(laid[i].uncond) - laid[i].n_response + laid[i].n_answer)
                 for i in part], batch_size)
            cond_lp.update(zip(part, cond, strict=True))
            uncond_lp.update(zip(part, unc, strict=True))
            bar.update(len(part))
    return _rows(samples, laid, cond_lp, uncond_lp)


def quality_reference(lm: LoadedModel, samples: Sequence[Sample],
                      config: QualityConfig | None = None) -> QualityRows:
    """The test oracle: one unpadded sequence per forward through the whole causal LM."""
    cfg = config or QualityConfig()
    max_length = min(cfg.max_length, lm.max_length)
    laid = [_lay_out(lm.tokenizer, s, max_length) for s in samples]
    cond_lp: dict[int, np.ndarray] = {}
    uncond_lp: dict[int, np.ndarray] = {}

    def logprobs(seq: tuple[int, ...], start: int, end: int) -> np.ndarray:
        x = torch.tensor([list(seq)], device=lm.device)
        logp = lm.model(input_ids=x).logits[0].float().log_softmax(-1)  # (L, V)
        return np.array([float(logp[p - 1, seq[p]]) for p in range(start, end)])

    with torch.inference_mode():
        for i, row in enumerate(laid):
            if row.reason:
                continue
            a = len(row.cond) - row.n_response
            cond_lp[i] = logprobs(row.cond, a, a + row.n_answer + row.n_stop)
            b = len(row.uncond) - row.n_response
            uncond_lp[i] = logprobs(row.uncond, b, b + row.n_answer)
    return _rows(samples, laid, cond_lp, uncond_lp)
