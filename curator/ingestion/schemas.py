"""Mapping the common fine-tuning schemas to chat messages.

Recognised without options: OpenAI ``messages``, ShareGPT ``conversations``, alpaca
(``instruction``, optional ``input``, ``output``), dolly (``instruction``, ``context``,
``response``), ``prompt``/``response``, ``prompt``/``completion``, ``question``/``answer``,
``query``/``response``. Fields that are not part of the mapping are kept as metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class RowError(ValueError):
    """This row cannot become a sample; the message is the quarantine reason."""


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "bot": "assistant", "model": "assistant"}

# (prompt field, response field) pairs tried in order after messages/conversations/alpaca.
PAIR_SCHEMAS = [("prompt", "response"), ("prompt", "completion"), ("question", "answer"),
                ("query", "response"), ("input", "output"), ("instruction", "response")]


@dataclass(frozen=True)
class FieldMap:
    """Explicit field names (CLI ``--prompt-field`` / ``--response-field``)."""

    prompt: str | None = None
    response: str | None = None
    messages: str | None = None


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value


def _chat(row: Mapping[str, Any], key: str, sharegpt: bool) -> list[dict[str, str]]:
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field {key!r} must be a non-empty list of turns")
    messages = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowError(f"turn {n} of {key!r} is not an object")
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(str(role).lower()) if sharegpt else role
        if role not in ("system", "user", "assistant"):
            raise RowError(f"turn {n} of {key!r} has unknown role {turn.get(role_key)!r}")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowError(f"turn {n} of {key!r} has no text content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise RowError(f"{key!r} does not end with an assistant turn")
    if not messages[-1]["content"].strip():
        raise RowError("the final assistant turn is empty")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise RowError(f"{key!r} has no user turn")
    return messages


def _pair(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def map_row(row: Mapping[str, Any], fields: FieldMap | None = None
            ) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Return (messages, metadata) for one input row, or raise RowError with the reason."""
    fields = fields or FieldMap()
    used: set[str]
    if fields.messages:
        if fields.messages not in row:
            raise RowError(f"missing field {fields.messages!r}")
        first = row[fields.messages][0] if isinstance(row[fields.messages], list) and \
            row[fields.messages] else {}
        messages = _chat(row, fields.messages, sharegpt="from" in first)
        used = {fields.messages}
    elif fields.prompt or fields.response:
        if not (fields.prompt and fields.response):
            raise RowError("give both --prompt-field and --response-field")
        messages = _pair(_text(row, fields.prompt), _text(row, fields.response))
        used = {fields.prompt, fields.response}
    elif "messages" in row:
        messages, used = _chat(row, "messages", sharegpt=False), {"messages"}
    elif "conversations" in row:
        messages, used = _chat(row, "conversations", sharegpt=True), {"conversations"}
    elif "instruction" in row and "output" in row:
        extra = _text(row, "input", required=False)
        instruction = _text(row, "instruction")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages, used = _pair(prompt, _text(row, "output")), {"instruction", "input", "output"}
    elif "instruction" in row and "context" in row and "response" in row:
        extra = _text(row, "context", required=False)
        instruction = _text(row, "instruction")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = _pair(prompt, _text(row, "response"))
        used = {"instruction", "context", "response"}
    else:
        # A complete pair anywhere in the list wins over a partial one earlier in it
        # (prompt/completion must not stop at prompt/response's missing 'response').
        complete = [(p, r) for p, r in PAIR_SCHEMAS if p in row and r in row]
        if complete:
            p, r = complete[0]
            messages, used = _pair(_text(row, p), _text(row, r)), {p, r}
        else:
            for p, r in PAIR_SCHEMAS:
                if p in row or r in row:
                    raise RowError(f"missing field {r if p in row else p!r}")
            keys = ", ".join(sorted(map(str, row))) or "none"
            raise RowError(f"no known schema (fields: {keys}); use --prompt-field and "
                           "--response-field")
    metadata = {k: v for k, v in row.items() if k not in used and _jsonable(v)}
    return messages, metadata


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
