"""How a target and an in-context example are laid out as tokens for the pairwise utility.

Every scored sequence is four token pieces, each tokenised on its own:

    head(i) + example(j) + turns(i) + response(i)      (d(i | j), with the example)
    head(i)              + turns(i) + response(i)      (d(i), without it)

so the target's tokens are identical in both sequences and the only difference between
d(i) and d(i | j) is the inserted example. ``head`` is whatever the target's rendering puts
before its first conversational turn (a system prompt, the template's default one included);
``turns`` is the rest of the prompt (user turn, generation prompt); ``response`` is what
the model is scored on (``curator.scoring.encoding.render``'s response text, so it matches
what the other scorers score).

Chat template: the example goes in as an earlier user/assistant turn pair, after the
target's system prompt and before the target's first user turn. That is the form chat
models are trained on for prior context, and unlike pasting "Example: ..." into the
target's user turn it leaves the target's own tokens untouched. The example's own system
prompt is dropped (a second system turn mid-conversation is out of distribution; the
target's system context governs).

No chat template: the reference implementation's text (DELIFT,
``get_icl_utility_kernel.py``):
``Instruction:\\n{ICL_INSTRUCTION}\\n\\n\\nExample:\\n{x_j}\\n{y_j}`` then ``\\n\\n\\nQuery:\\n{x_i}\\n``. Two deliberate differences: the reference scores its
no-example baseline under a different instruction ("Please generate a response to the
following query."), which mixes the effect of changing the instruction into every utility,
so here the instruction travels with the example block and the baseline is the bare query;
and the reference puts an EOS token between query and response, which here is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from curator.records import Sample
from curator.scoring.encoding import answer_split, has_chat_template, render, tokenize
from curator.vocabulary import SCORED_TOKENS

TEMPLATE_VERSION = 1
ICL_INSTRUCTION = ("Use the following example as a guide to answer the query in the same "
                   "format and style, providing a clear and concise response.")
PLAIN_EXAMPLE = "Instruction:\n{instruction}\n\n\nExample:\n{prompt}\n{response}\n\n\n"
PLAIN_QUERY = "Query:\n{prompt}\n"
TEMPLATES = ("auto", "chat", "plain")


# A system message with this content makes a template that injects a default system prompt
# (SmolLM2, Qwen2) render nothing extra, so the difference of two renderings is exactly
# the turns added after it.
_DUMMY_SYSTEM = {"role": "system", "content": "x"}


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be split into head / turns / response pieces."""


@dataclass(frozen=True)
class TargetPieces:
    head: tuple[int, ...]
    turns: tuple[int, ...]
    response: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.head) + len(self.turns) + len(self.response)


def resolve_template(tokenizer: object, template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    if template == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if template == "chat" and not has_chat_template(tokenizer):
        raise TemplateError("template='chat' but the tokenizer has no chat template")
    return template


def _split_system(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict], list[dict]]:
    """Leading system messages, and the turns after them."""
    msgs = [dict(m) for m in messages]
    n = 0
    while n < len(msgs) and msgs[n]["role"] == "system":
        n += 1
    return msgs[:n], msgs[n:]


def _render_turns(tokenizer: object, turns: list[dict], generation_prompt: bool) -> str:
    """The template's text for ``turns`` when they follow earlier turns."""
    base = tokenizer.apply_chat_template([_DUMMY_SYSTEM], tokenize=False)
    full = tokenizer.apply_chat_template([_DUMMY_SYSTEM] + turns, tokenize=False,
                                         add_generation_prompt=generation_prompt)
    if not full.startswith(base):
        raise TemplateError("the chat template does not render turns independently of "
                            "earlier ones; use template='plain'")
    return full[len(base):]


class PairTemplate:
    """Token pieces for targets and examples under one template, memoised by sample id."""

    def __init__(self, tokenizer: object, template: str = "auto", tokens: str = "response"):
        self.tokenizer = tokenizer
        self.kind = resolve_template(tokenizer, template)
        if tokens not in SCORED_TOKENS:
            raise ValueError(f"unknown tokens {tokens!r}; use one of {', '.join(SCORED_TOKENS)}")
        # "answer": the target's response stops after the answer's own tokens, so the
        # template's end-of-turn tokens are neither in the sequence nor scored (they come
        # last, so dropping them changes no earlier prediction)
        self.tokens = tokens
        self._targets: dict[str, TargetPieces] = {}
        self._examples: dict[str, tuple[int, ...]] = {}

    def target(self, sample: Sample) -> TargetPieces:
        got = self._targets.get(sample.sample_id)
        if got is None:
            got = self._targets[sample.sample_id] = self._target(sample)
        return got

    def example(self, sample: Sample) -> tuple[int, ...]:
        got = self._examples.get(sample.sample_id)
        if got is None:
            got = self._examples[sample.sample_id] = self._example(sample)
        return got

    def _target(self, sample: Sample) -> TargetPieces:
        tok = self.tokenizer
        if self.kind == "plain":
            turns = PLAIN_QUERY.format(prompt=sample.prompt)
            response = sample.response + (tok.eos_token or "")
            return TargetPieces((), tuple(tokenize(tok, turns)),
                                self._scored(sample, tokenize(tok, response)))
        prompt_text, response_text = render(tok, sample.prompt_messages, sample.response, True)
        _, rest = _split_system(sample.prompt_messages)
        turns = _render_turns(tok, rest, generation_prompt=True)
        if not prompt_text.endswith(turns):
            raise TemplateError("the chat template renders a sample's turns differently "
                                "after a system prompt; use template='plain'")
        head = prompt_text[: len(prompt_text) - len(turns)]
        return TargetPieces(tuple(tokenize(tok, head)) if head else (),
                            tuple(tokenize(tok, turns)),
                            self._scored(sample, tokenize(tok, response_text)))

    def _scored(self, sample: Sample, response: list[int]) -> tuple[int, ...]:
        if self.tokens == "answer":
            return tuple(response[:answer_split(self.tokenizer, sample.response, response)])
        return tuple(response)

    def _example(self, sample: Sample) -> tuple[int, ...]:
        tok = self.tokenizer
        if self.kind == "plain":
            text = PLAIN_EXAMPLE.format(instruction=ICL_INSTRUCTION, prompt=sample.prompt,
                                        response=sample.response)
            return tuple(tokenize(tok, text))
        _, rest = _split_system(sample.prompt_messages)
        turns = rest + [{"role": "assistant", "content": sample.response}]
        return tuple(tokenize(tok, _render_turns(tok, turns, generation_prompt=False)))

    def describe(self) -> dict[str, object]:
        """What enters the utility config hash: the template kind, version and texts."""
        out: dict[str, object] = {"kind": self.kind, "version": TEMPLATE_VERSION,
                                  "tokens": self.tokens}
        if self.kind == "plain":
            out.update(instruction=ICL_INSTRUCTION, example=PLAIN_EXAMPLE, query=PLAIN_QUERY)
        else:
            out["chat_template"] = self.tokenizer.chat_template
        return out
