"""The one record type that flows through curator: a chat sample with a content-addressed id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


def canonical_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Messages reduced to what identifies a sample: role and content, in order."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def sample_id_for(messages: Sequence[Mapping[str, Any]]) -> str:
    """Stable id: sha256 of the canonical JSON of the messages (first 32 hex digits, 128 bits).

    Metadata does not enter the id, so the same conversation arriving from two sources
    (or two versions) is one sample.
    """
    payload = json.dumps(canonical_messages(messages), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def split_prompt_response(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """Derive the prompt and response text: the response is the last assistant turn,
    the prompt is everything before it (single user turn: its content as is)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a sample must end with an assistant turn")
    before = messages[:-1]
    if len(before) == 1 and before[0]["role"] == "user":
        prompt = str(before[0]["content"])
    else:
        prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in before)
    return prompt, str(messages[-1]["content"])


@dataclass(frozen=True)
class Sample:
    """A fine-tuning sample. ``messages`` is the source of truth; prompt/response are derived."""

    sample_id: str
    messages: tuple[dict[str, str], ...]
    prompt: str
    response: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_messages(
        cls, messages: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any] | None = None
    ) -> Sample:
        msgs = canonical_messages(messages)
        prompt, response = split_prompt_response(msgs)
        return cls(sample_id_for(msgs), tuple(msgs), prompt, response, dict(metadata or {}))

    @classmethod
    def from_pair(
        cls, prompt: str, response: str, metadata: Mapping[str, Any] | None = None,
        system: str | None = None,
    ) -> Sample:
        msgs: list[dict[str, str]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return cls.from_messages(msgs, metadata)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """All turns before the final response (what a chat template renders as the prompt)."""
        return list(self.messages[:-1])
