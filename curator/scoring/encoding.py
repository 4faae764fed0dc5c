"""Turning samples into token ids with the response marked, shared by every scorer.

The prompt and the response are tokenised separately and concatenated, so the response
tokens are exactly known (no boundary guessing). With a chat template the prompt is the
template's rendering with the generation prompt, and the response is what the template
puts after it (content plus end-of-turn marker); without one, a plain instruction template.
Truncation only ever removes prompt tokens from the left: the response is never cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

PLAIN_PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class EncodedSample:
    input_ids: tuple[int, ...]
    n_prompt: int  # the first n_prompt ids are the prompt; the rest are response tokens

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.n_prompt


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: object, prompt_messages: Sequence[Mapping[str, str]], response: str,
           use_chat_template: bool | None = None) -> tuple[str, str]:
    """Return (prompt_text, response_text) as the model sees them."""
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if use_chat_template:
        msgs = [dict(m) for m in prompt_messages]
        prompt_text = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                    add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text):]
        return prompt_text, response + (tokenizer.eos_token or "")
    prompt = "\n\n".join(m["content"] for m in prompt_messages)
    return PLAIN_PROMPT_TEMPLATE.format(prompt=prompt), response + (tokenizer.eos_token or "")


def tokenize(tokenizer: object, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_split(tokenizer: object, answer: str, response_ids: Sequence[int]) -> int:
    """How many of ``response_ids`` (the rendered response: answer, then the template's
    end-of-turn tokens) are the answer's own tokens.

    The answer tokenised alone is compared with the start of the rendered response: with a
    special end-of-turn token (``<|im_end|>``, ``</s>``) the two agree exactly. Where the
    answer's last token merges with the marker's text, the common prefix is the answer and
    the merged token counts as template."""
    own = tokenize(tokenizer, answer) if answer else []
    n = 0
    for a, b in zip(own, response_ids, strict=False):
        if a != b:
            break
        n += 1
    return n


def encode(tokenizer: object, prompt_messages: Sequence[Mapping[str, str]], response: str,
           max_length: int, use_chat_template: bool | None = None) -> EncodedSample | None:
    """Encode one sample; None when even the response alone (plus one prompt token) does not fit."""
    prompt_text, response_text = render(tokenizer, prompt_messages, response, use_chat_template)
    return encode_ids(tokenize(tokenizer, prompt_text), tokenize(tokenizer, response_text),
                      max_length)


def encode_ids(prompt_ids: Sequence[int], response_ids: Sequence[int],
               max_length: int) -> EncodedSample | None:
    if len(response_ids) == 0 or len(response_ids) + 1 > max_length:
        return None
    keep = max_length - len(response_ids)
    prompt_ids = list(prompt_ids)[-keep:] if len(prompt_ids) > keep else list(prompt_ids)
    return EncodedSample(tuple(prompt_ids) + tuple(response_ids), len(prompt_ids))


def collate(batch: Sequence[EncodedSample], pad_id: int,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (-100 on prompt and padding)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, e.n_prompt:n] = ids[row, e.n_prompt:n]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def length_groups(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Split one batch into micro-batches of similar length that compute the fewest tokens.

    A micro-batch costs its rows times its longest row (padding costs as much as a real
    token on a CPU), plus ``overhead`` token-equivalents for running one more forward and
    backward (per-call work, less efficient small matrices). The exact minimum over
    contiguous runs of the length-sorted rows (an optimal partition is contiguous there;
    a batch is small, so the quadratic search is nothing). Index lists into ``lengths``,
    longest first; ``[]`` for no rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest split of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last micro-batch is order[i:j]; its longest row is order[i]
            cost = best[i] + (j - i) * lengths[order[i]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
