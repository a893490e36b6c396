"""Chat and text completion requests as the protocol module parses them, for the gateway and the
runtime alike: strict types, every unknown parameter refused by name, what the platform does not
do yet refused rather than half-served, and only what was parsed forwarded."""

from __future__ import annotations

import pytest

from serving.protocol import ProtocolError
from serving.protocol import generation as protocol

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_what_is_forwarded_is_only_what_was_parsed():
    request = protocol.parse_chat(
        {
            **CHAT,
            "temperature": 1,  # an integer is a number
            "stop": ["", "END"],
            "logit_bias": {},
            "user": "u-1",
            "metadata": {"team": "a"},
            "store": False,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            ],
        }
    )
    assert request.sampling() == {"temperature": 1.0, "stop": ["END"]}
    assert request.conversation() == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert request.completion_cap() == (None, None)
    assert protocol.parse_chat({**CHAT, "max_tokens": 5, "max_completion_tokens": 7}).completion_cap() == (
        7,
        "max_completion_tokens",
    )
    completion = protocol.parse_completion({"model": "m", "prompt": ["Once"], "max_tokens": 3})
    assert (completion.prompt, completion.completion_cap()) == ("Once", (3, "max_tokens"))


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"n": True}, "n", "invalid_value"),  # true is not 1
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
        ({"temperature": "hot"}, "temperature", "invalid_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"top_p": -1e-300}, "top_p", "invalid_value"),
        ({"seed": 2**63}, "seed", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"stop": ["a"] * 5}, "stop", "invalid_value"),
        ({"stop": "x" * 501}, "stop", "invalid_value"),
        ({"logit_bias": {"a": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"stream": True, "stream_options": {"other": 1}}, "stream_options.other", "unknown_parameter"),
        ({"chat_template": "{{ evil }}"}, "chat_template", "unknown_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": {"nested": "x"}}]}, "messages.0.content", "invalid_value"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages.0.extra", "unknown_parameter"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"model": ""}, "model", "invalid_value"),
    ],
)
def test_a_bad_chat_request_names_its_parameter(extra, param, code):
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_chat({**CHAT, **extra})
    assert (refused.value.param, refused.value.code) == (param, code), refused.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": "a", "echo": True}, "echo"),
        ({"model": "m", "prompt": "a", "suffix": "z"}, "suffix"),
        ({"model": "m", "prompt": "a", "best_of": 2}, "best_of"),
        ({"model": "m", "prompt": "a", "messages": []}, "messages"),
    ],
)
def test_a_bad_completion_request_names_its_parameter(body, param):
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_completion(body)
    assert refused.value.param == param
