"""Schema mapping: every common fine-tuning schema becomes chat messages plus metadata."""

from __future__ import annotations

import pytest

from curator.ingestion.schemas import FieldMap, RowError, map_row


def pair(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@pytest.mark.parametrize("row, messages, metadata", [
    pytest.param({"instruction": "Add", "input": "2 and 3", "output": "5", "id": 7},
                 pair("Add\n\n2 and 3", "5"), {"id": 7}, id="alpaca"),
    pytest.param({"instruction": "Say hi", "input": "", "output": "hi"},
                 pair("Say hi", "hi"), {}, id="alpaca-empty-input"),
    pytest.param({"instruction": "Say hi", "output": "hi", "category": "greet"},
                 pair("Say hi", "hi"), {"category": "greet"}, id="alpaca-no-input"),
    pytest.param({"instruction": "Sum", "input": None, "output": "0"},
                 pair("Sum", "0"), {}, id="alpaca-null-input"),
    pytest.param({"instruction": "Who?", "context": "Ada wrote it.", "response": "Ada",
                  "category": "closed_qa"},
                 pair("Who?\n\nAda wrote it.", "Ada"), {"category": "closed_qa"}, id="dolly"),
    pytest.param({"instruction": "Who?", "context": "", "response": "Ada"},
                 pair("Who?", "Ada"), {}, id="dolly-empty-context"),
    pytest.param({"prompt": "p", "response": "r", "score": 0.5},
                 pair("p", "r"), {"score": 0.5}, id="prompt-response"),
    pytest.param({"prompt": "p", "completion": "c"}, pair("p", "c"), {}, id="prompt-completion"),
    pytest.param({"question": "q", "answer": "a", "tags": ["x"]},
                 pair("q", "a"), {"tags": ["x"]}, id="question-answer"),
    pytest.param({"query": "q", "response": "r"}, pair("q", "r"), {}, id="query-response"),
    pytest.param({"input": "i", "output": "o"}, pair("i", "o"), {}, id="input-output"),
    pytest.param({"instruction": "i", "response": "r"}, pair("i", "r"), {},
                 id="instruction-response"),
    pytest.param(
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello", "name": "bot"}],
         "source": "chat"},
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}],
        {"source": "chat"}, id="openai-messages-with-system"),
    pytest.param(
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"},
                           {"from": "gpt", "value": "A1"}, {"from": "Human", "value": "Q2"},
                           {"from": "bot", "value": "A2"}], "id": "x1"},
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
         {"role": "assistant", "content": "A2"}],
        {"id": "x1"}, id="sharegpt"),
])
def test_known_schemas(row, messages, metadata):
    assert map_row(row) == (messages, metadata)


def test_explicit_fields_override_detection():
    row = {"prompt": "ignored", "response": "ignored", "q": "Q", "a": "A", "lang": "en"}
    assert map_row(row, FieldMap(prompt="q", response="a")) == (
        pair("Q", "A"), {"prompt": "ignored", "response": "ignored", "lang": "en"})


def test_explicit_messages_field_detects_openai_and_sharegpt():
    openai = {"chat": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    sharegpt = {"chat": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]}
    assert map_row(openai, FieldMap(messages="chat")) == (pair("u", "a"), {})
    assert map_row(sharegpt, FieldMap(messages="chat")) == (pair("u", "a"), {})
    with pytest.raises(RowError, match="^missing field 'chat'$"):
        map_row({"messages": []}, FieldMap(messages="chat"))


def test_metadata_keeps_only_json_values():
    row = {"prompt": "p", "response": "r", "n": 1, "ok": True, "none": None, "d": {"k": [1]},
           "blob": b"bytes", "obj": object()}
    assert map_row(row)[1] == {"n": 1, "ok": True, "none": None, "d": {"k": [1]}}


@pytest.mark.parametrize("row, fields, reason", [
    ({"prompt": "p"}, None, "missing field 'response'"),
    ({"answer": "a"}, None, "missing field 'question'"),
    ({"prompt": "p", "response": None}, None, "missing field 'response'"),
    ({"prompt": "p", "response": "  \n"}, None, "field 'response' is empty"),
    ({"prompt": "", "completion": "c"}, None, "field 'prompt' is empty"),
    ({"instruction": "", "output": "o"}, None, "field 'instruction' is empty"),
    ({"prompt": 3, "response": "r"}, None, "field 'prompt' must be text, got int"),
    ({"question": "q", "answer": ["a"]}, None, "field 'answer' must be text, got list"),
    ({"text": "t", "label": 1}, None,
     "no known schema (fields: label, text); use --prompt-field and --response-field"),
    ({}, None, "no known schema (fields: none); use --prompt-field and --response-field"),
    ({"q": "Q", "a": "A"}, FieldMap(prompt="q"), "give both --prompt-field and --response-field"),
    ({"q": "Q"}, FieldMap(prompt="q", response="a"), "missing field 'a'"),
    ({"messages": "hi"}, None, "field 'messages' must be a non-empty list of turns"),
    ({"messages": []}, None, "field 'messages' must be a non-empty list of turns"),
    ({"messages": ["hi"]}, None, "turn 0 of 'messages' is not an object"),
    ({"messages": [{"role": "robot", "content": "x"}]}, None,
     "turn 0 of 'messages' has unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 5}]}, None,
     "turn 1 of 'messages' has no text content"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]},
     None, "'messages' does not end with an assistant turn"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " "}]},
     None, "the final assistant turn is empty"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     None, "'messages' has no user turn"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, None,
     "turn 0 of 'conversations' has unknown role 'alien'"),
])
def test_bad_rows_raise_with_reason(row, fields, reason):
    with pytest.raises(RowError) as info:
        map_row(row, fields)
    assert str(info.value) == reason
