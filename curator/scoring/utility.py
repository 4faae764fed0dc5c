"""Pairwise in-context utility (DELIFT): UF(i, j) = d(i) - d(i | j).

d compares the target's response with the model's teacher-forced probabilities of its
ground-truth tokens: "prob-l2" is the paper's ``||1 - p||_2 / sqrt(T)`` over the T response
tokens, "nll" the mean negative log-likelihood. d(i) is computed once per target; d(i | j)
with example j placed in context before target i (layout in ``templates.py``).

Only candidate pairs are scored (from a kNN graph, or ``dense_pairs`` for small sets). The
fast path groups pairs by their prefix (target head + example), runs each prefix once,
and reuses its key/value cache for every target sharing it: prefixes of several groups are
run as one right-padded batch, and each suffix row attends to its group's cache row through
an attention mask with a hole where that prefix was padded, with position ids that continue
from the prefix's real length. A head shared by every prefix of a batch (a chat template's
system prompt) runs once and the examples continue from its cache; d(i) continues from it
the same way. Logits are computed only at response positions.

Truncation: the target (head, turns and response) is never cut. The example is cut from the
left (its response and end-of-turn marker stay next to the target) to what fits in
``max_length``; if fewer than ``min_example_tokens`` of it would be left, or the target alone
does not fit, the pair is invalid: NaN utility, ``valid`` False and a reason, never the
reference code's zero distance that made over-long pairs look maximally useful.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from curator.models import LoadedModel, pad_token_id
from curator.records import Sample
from curator.scoring.templates import (
    ICL_INSTRUCTION,
    PLAIN_EXAMPLE,
    PLAIN_QUERY,
    SCORED_TOKENS,
    TEMPLATE_VERSION,
    TEMPLATES,
    PairTemplate,
    TargetPieces,
    TemplateError,
    resolve_template,
)
from curator.vocabulary import DISTANCES

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LOGIT_ROWS = 1024  # response positions per lm-head block: bounds the (rows, V) fp32 logits


@dataclass(frozen=True)
class UtilityConfig:
    """Everything that changes a utility's value (besides the model), hashed for the store."""

    distance: str = "nll"
    template: str = "auto"  # "chat", "plain", or "auto" (chat when the tokenizer has one)
    max_length: int = 2048  # capped by the model's context length
    min_example_tokens: int = 16  # a truncated example shorter than this makes the pair invalid
    dtype: str = "auto"  # the model's dtype; "auto" until resolved against a model
    tokens: str = "answer"  # d over the answer's tokens, or the whole "response" (+ end-of-turn)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; "
                             f"use one of {', '.join(DISTANCES)}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; "
                             f"use one of {', '.join(TEMPLATES)}")
        if self.tokens not in SCORED_TOKENS:
            raise ValueError(f"unknown tokens {self.tokens!r}; "
                             f"use one of {', '.join(SCORED_TOKENS)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.min_example_tokens < 1:
            raise ValueError("min_example_tokens must be at least 1")

    def resolved(self, lm: LoadedModel) -> UtilityConfig:
        """The config with template and dtype made concrete for this model."""
        dtype = _DTYPE_NAMES.get(lm.dtype, str(lm.dtype).removeprefix("torch."))
        if self.dtype not in ("auto", dtype):
            raise ValueError(f"config dtype {self.dtype!r} but the model is {dtype}; "
                             f"load the model with dtype={self.dtype!r}")
        return replace(self, template=resolve_template(lm.tokenizer, self.template), dtype=dtype,
                       max_length=min(self.max_length, lm.max_length))

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the fields and the template texts (version-bumped)."""
        payload = asdict(self) | {"template_version": TEMPLATE_VERSION, "icl": ICL_INSTRUCTION,
                                  "plain": [PLAIN_EXAMPLE, PLAIN_QUERY]}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class PairChunk:
    """Scores for a batch of pairs; arrays are aligned with ``target_id``/``example_id``."""

    target_id: list[str]
    example_id: list[str]
    utility: np.ndarray  # (n,) float32, NaN where invalid
    d_target: np.ndarray  # (n,) float32 d(i), NaN when the target cannot be scored
    d_target_given_example: np.ndarray  # (n,) float32 d(i | j), NaN where invalid
    valid: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool: the example was cut to fit
    reason: list[str]  # "" for valid pairs, else why not
    config_hash: str

    def __len__(self) -> int:
        return len(self.target_id)

    @classmethod
    def concat(cls, chunks: Sequence[PairChunk]) -> PairChunk:
        if not chunks:
            raise ValueError("no chunks to concatenate")
        return cls(
            [t for c in chunks for t in c.target_id], [e for c in chunks for e in c.example_id],
            *(np.concatenate([getattr(c, f) for c in chunks])
              for f in ("utility", "d_target", "d_target_given_example", "valid", "truncated")),
            [r for c in chunks for r in c.reason], chunks[0].config_hash,
        )

    def as_dict(self) -> dict[tuple[str, str], float]:
        """(target_id, example_id) -> utility, for tests and small sets."""
        return {(t, e): float(u) for t, e, u in
                zip(self.target_id, self.example_id, self.utility, strict=True)}


@dataclass(frozen=True)
class _Pair:
    """One pair laid out as tokens: prefix (target head + example) and suffix (turns +
    response). Holds references to the memoised pieces, so a million pairs do not hold a
    million copies of their token lists."""

    target: TargetPieces
    example: tuple[int, ...]  # cut to fit when truncated
    truncated: bool
    reason: str  # "" when valid

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.target.head, self.example

    @property
    def prefix(self) -> tuple[int, ...]:
        return self.target.head + self.example

    @property
    def suffix(self) -> tuple[int, ...]:
        return self.target.turns + self.target.response

    @property
    def n_response(self) -> int:
        return len(self.target.response)

    @property
    def n_tokens(self) -> int:
        return self.target.n_tokens + len(self.example)


def _target_reason(tpl: PairTemplate, target: Sample, max_length: int) -> str:
    t = tpl.target(target)
    if not t.response:
        return "empty response"
    if not t.turns:
        raise TemplateError("the template put no prompt tokens before the response")
    if t.n_tokens > max_length:
        return f"target does not fit ({t.n_tokens} > {max_length} tokens)"
    return ""


def _lay_out(tpl: PairTemplate, target: Sample, example: Sample, cfg: UtilityConfig) -> _Pair:
    t = tpl.target(target)
    reason = _target_reason(tpl, target, cfg.max_length)
    if reason:
        return _Pair(t, (), False, reason)
    ex = tpl.example(example)
    budget = cfg.max_length - t.n_tokens
    truncated = len(ex) > budget
    if truncated:
        if budget < cfg.min_example_tokens:
            return _Pair(t, (), True, f"example does not fit ({budget} tokens left, need "
                                      f"{cfg.min_example_tokens})")
        ex = ex[len(ex) - budget:]  # keep the example's end, next to the target
    return _Pair(t, ex, truncated, "")


def _check_pairs(samples_by_id: Mapping[str, Sample],
                 pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [(str(t), str(e)) for t, e in pairs]
    if not pairs:
        raise ValueError("no pairs to score")
    missing = {i for p in pairs for i in p if i not in samples_by_id}
    if missing:
        some = ", ".join(sorted(missing)[:3])
        raise KeyError(f"{len(missing)} sample id(s) in pairs are not in samples_by_id: {some}")
    return pairs


# ---------------------------------------------------------------------------------------
# Model plumbing shared by the fast path and the target distances.


def _distances(lm: LoadedModel, hidden: torch.Tensor, labels: torch.Tensor,
               lengths: Sequence[int], n_response: Sequence[int], distance: str) -> np.ndarray:
    """Per-row distance from final hidden states (B, L, d) of right-padded rows whose last
    n_response[b] real tokens (of lengths[b]) are the response; labels (B, L) are the ids."""
    rows: list[int] = []
    cols: list[int] = []
    seg: list[int] = []
    for b, (n, t) in enumerate(zip(lengths, n_response, strict=True)):
        rows += [b] * t
        cols += range(n - t - 1, n - 1)  # position p predicts token p + 1
        seg += [b] * t
    dev = hidden.device
    rows_t = torch.tensor(rows, device=dev)
    cols_t = torch.tensor(cols, device=dev)
    h = hidden[rows_t, cols_t]  # (N, d)
    gold = labels[rows_t, cols_t + 1]  # (N,)
    head = lm.model.get_output_embeddings()
    softcap = getattr(lm.model.config, "final_logit_softcapping", None)
    logp = torch.empty(len(rows), dtype=torch.float32, device=dev)
    for s in range(0, len(rows), _LOGIT_ROWS):
        logits = head(h[s:s + _LOGIT_ROWS]).float()  # (n, V), fp32 for the softmax
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp[s:s + _LOGIT_ROWS] = logits.log_softmax(-1).gather(
            -1, gold[s:s + _LOGIT_ROWS, None]).squeeze(-1)
    return distance_from_logprobs(logp, torch.tensor(seg, device=dev), len(lengths),
                                  distance).cpu().numpy()


def distance_from_logprobs(logp: torch.Tensor, segment: torch.Tensor, n_segments: int,
                           distance: str) -> torch.Tensor:
    """d per segment from the ground-truth tokens' log-probabilities logp (N,), where
    segment (N,) says which sequence each token's prediction belongs to. Returns (n_segments,).

    prob-l2: ||1 - p||_2 / sqrt(T) (DELIFT); nll: mean of -log p. Both are 0 for a perfect
    prediction; prob-l2 is at most 1.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; use one of {', '.join(DISTANCES)}")
    zeros = torch.zeros(n_segments, dtype=logp.dtype, device=logp.device)
    count = zeros.index_add(0, segment, torch.ones_like(logp))  # T per sequence
    terms = (1.0 - logp.exp()) ** 2 if distance == "prob-l2" else -logp
    total = zeros.index_add(0, segment, terms)
    return (total / count).sqrt() if distance == "prob-l2" else total / count


def _pad(seqs: Sequence[Sequence[int]], pad_id: int,
         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, both (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids.to(device), mask.to(device)


def _pad_id(lm: LoadedModel) -> int:
    return pad_token_id(lm.tokenizer)


def _score_full(lm: LoadedModel, seqs: Sequence[tuple[Sequence[int], int]], distance: str,
                batch_size: int) -> np.ndarray:
    """Distances of whole sequences (ids, n_response), no cache, batched by length."""
    out = np.empty(len(seqs), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    base = lm.model.base_model
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = _pad([seqs[i][0] for i in idx], _pad_id(lm), lm.device)
        # Padded positions past the context would index off a learned position table.
        pos = torch.arange(ids.shape[1], device=lm.device).clamp(max=lm.max_length - 1)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos.expand_as(ids),
                      use_cache=False).last_hidden_state  # (B, L, d)
        out[idx] = _distances(lm, hidden, ids, [len(seqs[i][0]) for i in idx],
                              [seqs[i][1] for i in idx], distance)
    return out


PrefixKey = tuple[tuple[int, ...], tuple[int, ...]]  # (target head, example) token ids


def _cache_name(model: torch.nn.Module) -> str:
    """The keyword this transformers' model takes a Cache object under: ``cache`` from
    5.24 (where ``past_key_values`` is deprecated, to be removed in 5.40), else
    ``past_key_values``. Read from the forward's signature (the deprecation wrapper keeps
    it): passing an unknown name would be swallowed by ``**kwargs`` and silently score
    without the prefix."""
    return _cache_name_of(type(model))


@functools.cache
def _cache_name_of(model_class: type) -> str:
    # once per model class: the signature is read on every forward of the prefix loop
    params = inspect.signature(model_class.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{model_class.__name__}.forward takes no key/value cache argument")


def _cache_kwarg(model: torch.nn.Module, cache: object) -> dict[str, object]:
    return {_cache_name(model): cache}


def _out_cache(output: object) -> object:
    """The cache a forward returned: ``output.cache`` from transformers 5.24 (reading
    ``past_key_values`` there logs a deprecation), else ``output.past_key_values``."""
    fields = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in fields else output.past_key_values


def _prefix_cache(lm: LoadedModel, keys: Sequence[PrefixKey]
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Key/value cache rows (each (G, H, Lp, hd) per layer) and attention mask (G, Lp) of
    the prefixes head + example, right-padded.

    When every prefix has the same head (a chat template's system prompt: 21 tokens of
    SmolLM2's ~70-token prefixes), the head runs once and the examples continue from its
    cache, so no prefix pays for the head again."""
    from transformers import DynamicCache

    base = lm.model.base_model
    dev = lm.device
    heads = {h for h, _ in keys}
    head = next(iter(heads))
    if len(heads) == 1 and head and all(e for _, e in keys):
        g, lh = len(keys), len(head)
        h_ids = torch.tensor([head], device=dev)
        h_cache = _out_cache(base(input_ids=h_ids, attention_mask=torch.ones_like(h_ids),
                                  position_ids=torch.arange(lh, device=dev)[None],
                                  use_cache=True))
        cache = DynamicCache([(layer.keys.expand(g, -1, -1, -1).contiguous(),
                               layer.values.expand(g, -1, -1, -1).contiguous())
                              for layer in h_cache.layers], config=lm.model.config)
        e_ids, e_mask = _pad([e for _, e in keys], _pad_id(lm), dev)
        p_mask = torch.cat([torch.ones((g, lh), dtype=e_mask.dtype, device=dev), e_mask], 1)
        pos = (lh + torch.arange(e_ids.shape[1], device=dev)).expand_as(e_ids)
        cache = _out_cache(base(input_ids=e_ids, attention_mask=p_mask, position_ids=pos,
                                use_cache=True, **_cache_kwarg(base, cache)))
    else:
        p_ids, p_mask = _pad([h + e for h, e in keys], _pad_id(lm), dev)  # (G, Lp)
        pos = torch.arange(p_ids.shape[1], device=dev).expand_as(p_ids)
        cache = _out_cache(base(input_ids=p_ids, attention_mask=p_mask, position_ids=pos,
                                use_cache=True))
    return [(layer.keys, layer.values) for layer in cache.layers], p_mask


def _score_with_prefixes(lm: LoadedModel, keys: Sequence[PrefixKey],
                         rows: Sequence[tuple[int, tuple[int, ...], int]], distance: str,
                         batch_size: int) -> np.ndarray:
    """Distances for suffix rows (prefix index, suffix ids, n_response) that continue the
    prefixes (head, example): the prefixes run once as one batch, their cache is shared by
    the rows."""
    from transformers import DynamicCache

    base = lm.model.base_model
    dev = lm.device
    kv, p_mask = _prefix_cache(lm, keys)
    p_len = p_mask.sum(1)  # (G,)

    out = np.empty(len(rows), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        group = torch.tensor([rows[i][0] for i in idx], device=dev)  # (B,)
        s_ids, s_mask = _pad([rows[i][1] for i in idx], _pad_id(lm), dev)  # (B, Ls)
        # Each row gets its own copy of its prefix's cache row (the model appends to it).
        row_cache = DynamicCache([(k.index_select(0, group), v.index_select(0, group))
                                  for k, v in kv], config=lm.model.config)
        # Mask (B, Lp + Ls): the prefix's padding is a hole the row must not attend to.
        mask = torch.cat([p_mask.index_select(0, group), s_mask], dim=1)
        # Positions continue from the prefix's real length, not from the padded width.
        s_pos = p_len.index_select(0, group)[:, None] + torch.arange(s_ids.shape[1], device=dev)
        s_pos = s_pos.clamp(max=lm.max_length - 1)  # only padding can run past the context
        hidden = base(input_ids=s_ids, attention_mask=mask, position_ids=s_pos, use_cache=True,
                      **_cache_kwarg(base, row_cache)).last_hidden_state  # (B, Ls, d)
        out[idx] = _distances(lm, hidden, s_ids, [len(rows[i][1]) for i in idx],
                              [rows[i][2] for i in idx], distance)
    return out


# ---------------------------------------------------------------------------------------
# Public API.


def score_targets(lm: LoadedModel, samples: Sequence[Sample], config: UtilityConfig | None = None,
                  *, batch_size: int = 16) -> dict[str, float]:
    """d(i) for each sample as a target (no example); NaN where it cannot be scored."""
    cfg = (config or UtilityConfig()).resolved(lm)
    tpl = PairTemplate(lm.tokenizer, cfg.template, cfg.tokens)
    out: dict[str, float] = {}
    todo: list[Sample] = []
    for s in samples:
        if _target_reason(tpl, s, cfg.max_length):
            out[s.sample_id] = float("nan")
        else:
            todo.append(s)
    if todo:
        pieces = [tpl.target(s) for s in todo]
        heads = {t.head for t in pieces}
        with torch.inference_mode():
            if len(heads) == 1 and pieces[0].head:
                # One shared head (a system prompt) runs once; the targets continue from it,
                # as they do behind an example in d(i | j).
                d = _score_with_prefixes(lm, [(pieces[0].head, ())],
                                         [(0, t.turns + t.response, len(t.response))
                                          for t in pieces], cfg.distance, batch_size)
            else:
                d = _score_full(lm, [(t.head + t.turns + t.response, len(t.response))
                                     for t in pieces], cfg.distance, batch_size)
        out.update({s.sample_id: float(v) for s, v in zip(todo, d, strict=True)})
    return out


def _laid_pairs(lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                pairs: Sequence[tuple[str, str]], config: UtilityConfig | None,
                batch_size: int, chunk_pairs: int
                ) -> tuple[UtilityConfig, list[tuple[str, str]], list[_Pair]]:
    """Checked settings and pairs, and each pair laid out (what ``score_pairs`` and
    ``pair_units`` both start from, so their units agree)."""
    if batch_size < 1 or chunk_pairs < 1:
        raise ValueError("batch_size and chunk_pairs must be positive")
    cfg = (config or UtilityConfig()).resolved(lm)
    checked = _check_pairs(samples_by_id, pairs)
    tpl = PairTemplate(lm.tokenizer, cfg.template, cfg.tokens)
    return cfg, checked, [_lay_out(tpl, samples_by_id[t], samples_by_id[e], cfg)
                          for t, e in checked]


def score_pairs(lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                pairs: Sequence[tuple[str, str]], config: UtilityConfig | None = None, *,
                batch_size: int = 16, chunk_pairs: int = 1024, prefix_reuse: bool = True,
                target_distances: Mapping[str, float] | None = None,
                progress: bool = False) -> Iterator[PairChunk]:
    """Score (target_id, example_id) pairs, yielding chunks a caller can commit one by one.

    Chunks come in the engine's order, not the input order (each carries its ids). Invalid
    pairs come first, in one chunk. ``target_distances`` are known d(i) values (from the
    store) to reuse; the rest are computed once, as the chunks need them. Bad input raises
    here, before the first chunk is asked for.
    """
    cfg, pairs, laid = _laid_pairs(lm, samples_by_id, pairs, config, batch_size, chunk_pairs)
    d_memo: dict[str, float] = dict(target_distances or {})
    config_hash = cfg.config_hash()

    def need_targets(idx: Sequence[int]) -> None:
        todo = {pairs[i][0] for i in idx} - d_memo.keys()
        if todo:
            d_memo.update(score_targets(lm, [samples_by_id[t] for t in sorted(todo)], cfg,
                                        batch_size=batch_size))

    def chunk(idx: Sequence[int], d_given: np.ndarray) -> PairChunk:
        d_t = np.array([d_memo[pairs[i][0]] for i in idx], dtype=np.float32)
        reason = [laid[i].reason or ("" if np.isfinite(d) and np.isfinite(dt) else
                                     "non-finite distance") for i, d, dt in
                  zip(idx, d_given.tolist(), d_t.tolist(), strict=True)]
        valid = np.array([r == "" for r in reason], dtype=bool)
        util = np.where(valid, d_t.astype(np.float64) - d_given, np.nan).astype(np.float32)
        return PairChunk([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], util, d_t,
                         np.where(valid, d_given, np.nan).astype(np.float32), valid,
                         np.array([laid[i].truncated for i in idx], dtype=bool), reason,
                         config_hash)

    def unit_distances(unit: Sequence[int]) -> np.ndarray:
        # inference_mode only around the compute: it is thread state, and must not leak into
        # the caller while this generator is suspended at a yield.
        with torch.inference_mode():
            if not prefix_reuse:
                return _score_full(lm, [(laid[i].prefix + laid[i].suffix, laid[i].n_response)
                                        for i in unit], cfg.distance, batch_size)
            prefixes: dict[tuple, int] = {}
            rows = [(prefixes.setdefault(laid[i].key, len(prefixes)), laid[i].suffix,
                     laid[i].n_response) for i in unit]
            return _score_with_prefixes(lm, list(prefixes), rows, cfg.distance, batch_size)

    def run() -> Iterator[PairChunk]:
        invalid = [i for i, p in enumerate(laid) if p.reason]
        units = _prefix_units(laid, batch_size, chunk_pairs) if prefix_reuse else \
            _length_units(laid, chunk_pairs)
        with tqdm(total=len(pairs), unit="pair", disable=not progress, desc="utilities") as bar:
            if invalid:
                need_targets(invalid)
                yield chunk(invalid, np.full(len(invalid), np.nan, dtype=np.float32))
                bar.update(len(invalid))
            for unit in units:
                need_targets(unit)
                d_given = unit_distances(unit)
                yield chunk(unit, d_given)
                bar.update(len(unit))

    return run()


def pair_units(lm: LoadedModel, samples_by_id: Mapping[str, Sample],
               pairs: Sequence[tuple[str, str]], config: UtilityConfig | None = None, *,
               batch_size: int = 16, chunk_pairs: int = 1024) -> list[list[tuple[str, str]]]:
    """The pairs split the way ``score_pairs`` (prefix reuse on) splits them: the invalid
    pairs first (one unit, when there are any), then units of whole prefix groups, each at
    most ``batch_size`` prefixes and about ``chunk_pairs`` pairs. ``score_pairs`` run on
    one unit scores it as one unit again, so a distributed engine that hands out units
    keeps the KV reuse and the local engine's batches (``curator.scoring.ray_engine``)."""
    cfg, pairs, laid = _laid_pairs(lm, samples_by_id, pairs, config, batch_size, chunk_pairs)
    invalid = [i for i, p in enumerate(laid) if p.reason]
    units = ([invalid] if invalid else []) + _prefix_units(laid, batch_size, chunk_pairs)
    return [[pairs[i] for i in unit] for unit in units]


def _prefix_units(laid: Sequence[_Pair], batch_size: int, chunk_pairs: int) -> list[list[int]]:
    """Valid pairs grouped by prefix; a unit is at most ``batch_size`` prefixes (one prefix
    forward) and about ``chunk_pairs`` pairs. Groups are ordered by prefix length so a
    prefix batch pads little."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(laid):
        if not p.reason:
            groups[p.key].append(i)
    by_length = sorted(groups.items(), key=lambda kv: len(kv[0][0]) + len(kv[0][1]))
    pieces = [g[s:s + chunk_pairs] for _, g in by_length for s in range(0, len(g), chunk_pairs)]
    units: list[list[int]] = []
    cur: list[int] = []
    n_groups = 0
    for g in pieces:
        if cur and (n_groups == batch_size or len(cur) + len(g) > chunk_pairs):
            units.append(cur)
            cur, n_groups = [], 0
        cur += g
        n_groups += 1
    if cur:
        units.append(cur)
    return units


def _length_units(laid: Sequence[_Pair], chunk_pairs: int) -> list[list[int]]:
    order = sorted((i for i, p in enumerate(laid) if not p.reason),
                   key=lambda i: laid[i].n_tokens)
    return [order[s:s + chunk_pairs] for s in range(0, len(order), chunk_pairs)]


def score_pairs_reference(lm: LoadedModel, samples_by_id: Mapping[str, Sample],
                          pairs: Sequence[tuple[str, str]],
                          config: UtilityConfig | None = None) -> PairChunk:
    """The test oracle: one full sequence per forward pass through the whole causal LM, no
    cache, no padding, no batching; results in input order."""
    cfg = (config or UtilityConfig()).resolved(lm)
    pairs = _check_pairs(samples_by_id, pairs)
    tpl = PairTemplate(lm.tokenizer, cfg.template, cfg.tokens)

    def distance(ids: Sequence[int], n_response: int) -> float:
        x = torch.tensor([list(ids)], device=lm.device)
        logits = lm.model(input_ids=x).logits[0].float()  # (L, V)
        probs = logits[-n_response - 1:-1].softmax(-1)  # predictions of the response tokens
        p = probs.gather(-1, x[0, -n_response:, None]).squeeze(-1)  # (T,)
        if cfg.distance == "prob-l2":
            return float(torch.linalg.vector_norm(1.0 - p) / n_response ** 0.5)
        return float(-p.log().mean())

    d_memo: dict[str, float] = {}
    cols: dict[str, list] = defaultdict(list)
    with torch.inference_mode():
        for t_id, e_id in pairs:
            target = samples_by_id[t_id]
            pair = _lay_out(tpl, target, samples_by_id[e_id], cfg)
            if t_id not in d_memo:
                t = tpl.target(target)
                ok = not _target_reason(tpl, target, cfg.max_length)
                d_memo[t_id] = distance(t.head + t.turns + t.response, len(t.response)) \
                    if ok else float("nan")
            d_given = distance(pair.prefix + pair.suffix, pair.n_response) \
                if not pair.reason else float("nan")
            cols["d_t"].append(d_memo[t_id])
            cols["d_g"].append(d_given)
            cols["valid"].append(not pair.reason)
            cols["trunc"].append(pair.truncated)
            cols["reason"].append(pair.reason)
    d_t = np.array(cols["d_t"], dtype=np.float64)
    d_g = np.array(cols["d_g"], dtype=np.float64)
    valid = np.array(cols["valid"], dtype=bool)
    return PairChunk([t for t, _ in pairs], [e for _, e in pairs],
                     np.where(valid, d_t - d_g, np.nan).astype(np.float32),
                     d_t.astype(np.float32), d_g.astype(np.float32), valid,
                     np.array(cols["trunc"], dtype=bool), cols["reason"], cfg.config_hash())
