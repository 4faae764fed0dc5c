"""Evaluation of a (fine-tuned) model on held-out rows: loss and exact match.

Loss: the teacher-forced mean loss per row (``row_losses``, so a benchmark can pair rows
across models; ``eval_loss`` is their mean, for `curator eval` and training's eval alike)
over the tokens ``tokens`` names (``vocabulary.EVAL_TOKENS``): "answer" (the default) the
answer's own tokens, as DELIFT's utilities and the quality prior score them, without the
chat template's end-of-turn tokens (``scoring.encoding.answer_split``), which carry format,
not content, and at a small model can be half of a short answer's tokens; "response" the
whole rendered response, end-of-turn tokens included (the loss training minimises).

Exact match: greedy generation from each row's prompt, rendered as in training (the chat
template with its generation prompt), up to ``max_new_tokens`` or a stop token (EOS, and
``<|im_end|>`` where the tokenizer has it); the answer is extracted from the generation
and from the reference with the same optional regex (``answer_pattern``: group 1 when the
pattern has a group, else the whole match; GSM8K's is ``#### (.*)``) and both are
normalised (``normalise_answer``) before comparing. A generation in which the pattern
finds nothing is a miss; a reference in which it finds nothing is compared whole (so
plain short references work with a pattern that picks the answer out of a longer
generation).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from curator.config import EVAL_DEFAULTS as _D
from curator.models import LoadedModel, pad_token_id
from curator.records import Sample
from curator.scoring.encoding import EncodedSample, answer_split, render, tokenize
from curator.scoring.gradients import batch_losses, encode_samples, iter_batches
from curator.vocabulary import EVAL_TOKENS

STOP_TOKENS = ("<|im_end|>",)  # chat-turn ends, besides the tokenizer's EOS
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Thousands separators ("1,000") go before punctuation is dropped; a '.' or ',' between
# two digits stays, so "3.5" does not become "35".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCT = re.compile(r"(?<!\d)[%s]|[%s](?!\d)" % ((re.escape(string.punctuation),) * 2))


def compile_pattern(pattern: str | re.Pattern | None) -> re.Pattern | None:
    """A compiled answer pattern, or ValueError with the regex error in one line."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"answer pattern {pattern!r} is not a valid regex: {exc}") from exc


def extract_answer(text: str, pattern: str | re.Pattern | None = None) -> str | None:
    """The answer in ``text``: the first match of ``pattern`` (its group 1 when it has a
    group), None when it does not match; the whole text without a pattern."""
    rx = compile_pattern(pattern)
    if rx is None:
        return text
    m = rx.search(text)
    if m is None:
        return None
    return m.group(1) if rx.groups else m.group(0)


def normalise_answer(text: str) -> str:
    """Lower case, thousands separators and punctuation dropped (except a '.' or ','
    between digits), articles dropped, whitespace collapsed: SQuAD's rule, made safe for
    numbers and for a lone letter ("(A)" stays "a": articles go only when words remain)."""
    text = _THOUSANDS.sub("", text.lower())
    text = _PUNCT.sub(" ", text)
    words = _ARTICLES.sub(" ", text).split()
    return " ".join(words or text.split())


def answers_match(generated: str, reference: str,
                  pattern: str | re.Pattern | None = None) -> bool:
    """Exact match of one generation with its reference (see the module docstring)."""
    predicted = extract_answer(generated, pattern)
    if predicted is None:
        return False
    wanted = extract_answer(reference, pattern)
    if wanted is None:
        wanted = reference
    return normalise_answer(predicted) == normalise_answer(wanted)


def _stop_ids(tokenizer: object) -> list[int]:
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in STOP_TOKENS if t in vocab}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


@torch.no_grad()
def generate_greedy(lm: LoadedModel, samples: Sequence[Sample],
                    max_new_tokens: int = _D.max_new_tokens,
                    batch_size: int = _D.batch_size) -> list[str]:
    """Greedy continuation of each sample's prompt (its response is ignored), decoded up
    to the first stop token. Prompts are left-padded in batches of similar length."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    tok = lm.tokenizer
    pad = pad_token_id(tok)
    stops = _stop_ids(tok)
    prompts = [tokenize(tok, render(tok, s.prompt_messages, "")[0]) for s in samples]
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = lm.model.training
    lm.model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: every prompt ends at one column
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                att[row, width - len(prompts[i]):] = 1
            gen = lm.model.generate(input_ids=ids.to(lm.device),
                                    attention_mask=att.to(lm.device),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    num_beams=1, pad_token_id=pad,
                                    eos_token_id=stops or None)
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()
                cut = next((n for n, t in enumerate(new) if t in stops), len(new))
                out[i] = tok.decode(new[:cut], skip_special_tokens=True)
    finally:
        lm.model.train(was_training)
    return out


@dataclass
class ExactMatch:
    """Per-row outcome of ``exact_match``; ``score`` is the share of hits."""

    hits: list[bool]
    generations: list[str]
    predicted: list[str | None]  # extracted from the generation (None: no match)
    references: list[str]        # extracted from the reference
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float(np.mean(self.hits)) if self.hits else float("nan")


def exact_match(lm: LoadedModel, samples: Sequence[Sample],
                max_new_tokens: int = _D.max_new_tokens,
                answer_pattern: str | re.Pattern | None = None,
                batch_size: int = _D.batch_size) -> ExactMatch:
    """Greedy-generate for each sample and compare the extracted answer with the one in
    its response (see the module docstring)."""
    rx = compile_pattern(answer_pattern)
    if not samples:
        raise ValueError("no samples to evaluate")
    generations = generate_greedy(lm, samples, max_new_tokens, batch_size)
    predicted = [extract_answer(g, rx) for g in generations]
    refs = []
    for s in samples:
        r = extract_answer(s.response, rx)
        refs.append(s.response if r is None else r)
    # the one rule the tests check, so `curator eval` runs exactly it
    hits = [answers_match(g, s.response, rx) for g, s in zip(generations, samples, strict=True)]
    return ExactMatch(hits, generations, predicted, refs,
                      {"max_new_tokens": max_new_tokens,
                       "answer_pattern": rx.pattern if rx is not None else None})


def _answer_only(tokenizer: object, sample: Sample,
                 encoded: EncodedSample | None) -> EncodedSample | None:
    """The encoded sample cut after its answer's own tokens (a causal LM's loss on them does
    not depend on the end-of-turn tokens after them); None when the response did not fit
    (as for "response") or the answer has no token of its own."""
    if encoded is None:
        return None
    n = answer_split(tokenizer, sample.response, encoded.input_ids[encoded.n_prompt:])
    if n == 0:
        return None
    return EncodedSample(encoded.input_ids[:encoded.n_prompt + n], encoded.n_prompt)


@torch.no_grad()
def row_losses(lm: LoadedModel, samples: Sequence[Sample], batch_size: int = _D.batch_size,
               max_length: int = _D.max_length, *, tokens: str = _D.tokens) -> np.ndarray:
    """(N,) each sample's mean loss over its answer's tokens (``tokens="answer"``) or its
    whole response's (``"response"``), teacher-forced; NaN for a sample whose response
    does not fit the context (or, for "answer", whose answer has no token of its own)."""
    if tokens not in EVAL_TOKENS:
        raise ValueError(f"unknown eval tokens {tokens!r}; use one of {', '.join(EVAL_TOKENS)}")
    encoded = encode_samples(lm.tokenizer, samples, min(max_length, lm.max_length))
    if tokens == "answer":
        encoded = [_answer_only(lm.tokenizer, s, e)
                   for s, e in zip(samples, encoded, strict=True)]
    out = np.full(len(samples), np.nan)
    was_training = lm.model.training
    lm.model.eval()
    try:
        for idx, batch in iter_batches(encoded, batch_size, pad_token_id(lm.tokenizer),
                                       lm.device):
            out[idx] = batch_losses(lm.model, batch).float().cpu().numpy()
    finally:
        lm.model.train(was_training)
    return out


def eval_loss(lm: LoadedModel, samples: Sequence[Sample], batch_size: int = _D.batch_size,
              max_length: int = _D.max_length, *, tokens: str = _D.tokens) -> float:
    """The mean of ``row_losses`` over the samples it could score (`curator eval`, and
    training's eval as ``curator.training.finetune.eval_loss``); ValueError when there is none."""
    losses = row_losses(lm, samples, batch_size, max_length, tokens=tokens)
    scored = losses[~np.isnan(losses)]
    if scored.size == 0:
        raise ValueError("no evaluation sample fits the context length"
                         + (" with an answer of its own" if tokens == "answer" else ""))
    return float(scored.mean())
