"""The record type: content-addressed ids and derived prompt/response."""

from __future__ import annotations

import pytest

from curator.records import Sample, canonical_messages, sample_id_for, split_prompt_response

HELLO = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def test_sample_id_is_pinned():
    # sha256 of the canonical JSON, first 32 hex digits. Every stored score is keyed by this
    # id, so it must never change by accident.
    import hashlib

    payload = '[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]'
    assert sample_id_for(HELLO) == "184a355aee0241e4024b8ad255384f6c"
    assert sample_id_for(HELLO) == hashlib.sha256(payload.encode()).hexdigest()[:32]


def test_sample_id_ignores_metadata_and_extra_turn_keys():
    extra = [{"role": "user", "content": "Hi", "name": "x"},
             {"role": "assistant", "content": "Hello", "weight": 0}]
    assert sample_id_for(extra) == sample_id_for(HELLO)
    a = Sample.from_messages(HELLO, {"source": "a"})
    b = Sample.from_messages(HELLO, {"source": "b", "id": 3})
    assert a.sample_id == b.sample_id
    assert a == b  # metadata does not take part in equality
    assert a.metadata == {"source": "a"}


def test_sample_id_depends_on_roles_content_and_order():
    ids = {
        sample_id_for(HELLO),
        sample_id_for([{"role": "user", "content": "Hi "}, HELLO[1]]),
        sample_id_for([{"role": "system", "content": "Hi"}, HELLO[1]]),
        sample_id_for([HELLO[0], {"role": "assistant", "content": "Hello!"}]),
        sample_id_for([{"role": "system", "content": "s"}] + HELLO),
        sample_id_for([{"role": "user", "content": "Hé"}, HELLO[1]]),
    }
    assert len(ids) == 6


def test_canonical_messages_keeps_role_and_content_as_text():
    assert canonical_messages([{"role": "user", "content": 5, "x": 1}]) == [
        {"role": "user", "content": "5"}]


def test_split_prompt_response():
    assert split_prompt_response(HELLO) == ("Hi", "Hello")
    system = [{"role": "system", "content": "Be brief."}] + HELLO
    assert split_prompt_response(system) == ("system: Be brief.\n\nuser: Hi", "Hello")
    multi = HELLO + [{"role": "user", "content": "More"}, {"role": "assistant", "content": "Ok"}]
    assert split_prompt_response(multi) == ("user: Hi\n\nassistant: Hello\n\nuser: More", "Ok")
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        split_prompt_response(HELLO[:1])
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        split_prompt_response([])


def test_from_pair_and_prompt_messages():
    s = Sample.from_pair("Hi", "Hello", {"k": 1})
    assert s == Sample.from_messages(HELLO)
    assert (s.prompt, s.response, s.metadata) == ("Hi", "Hello", {"k": 1})
    assert s.prompt_messages == [{"role": "user", "content": "Hi"}]
    with_system = Sample.from_pair("Hi", "Hello", system="Be brief.")
    assert with_system.messages[0] == {"role": "system", "content": "Be brief."}
    assert with_system.prompt == "system: Be brief.\n\nuser: Hi"
    assert with_system.sample_id != s.sample_id
    assert with_system.prompt_messages == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi"}]
