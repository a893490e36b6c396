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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 9}, "n", "invalid_value"),
        ({"n": True}, "n", "invalid_value"),  # true is not 1
        ({"logprobs": 1}, "logprobs", "invalid_value"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools.0.function.name", "invalid_value"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "invalid_value"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice",
            "invalid_value",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),  # no tools to choose from
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
            "tools.0.function.parameters.type",
            "invalid_value",
        ),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_required_parameter"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minLength": -1}}}},
            "response_format.json_schema.schema.minLength",
            "invalid_value",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"enum": list(range(2001))}},
                }
            },
            "response_format.json_schema.schema",
            "schema_too_large",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages.0", "invalid_value"),  # no tool_call_id
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0", "invalid_value"),
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


def test_tools_and_formats_become_one_constraint():
    request = protocol.parse_chat({**CHAT, "tools": [WEATHER], "tool_choice": "required"})
    constraint = request.constraint()
    assert (constraint.kind, constraint.required, constraint.parallel) == ("tools", True, False)
    assert [f.name for f in constraint.functions] == ["get_weather"]
    assert request.tool_fields() == {"tools": [WEATHER], "tool_choice": "required"}
    auto = protocol.parse_chat({**CHAT, "tools": [WEATHER], "parallel_tool_calls": True}).constraint()
    assert (auto.required, auto.parallel) == (False, True)
    assert protocol.parse_chat({**CHAT, "tools": [WEATHER], "tool_choice": "none"}).constraint() is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    shaped = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    formatted = protocol.parse_chat({**CHAT, "response_format": shaped})
    assert formatted.constraint().schema == schema
    assert formatted.tool_fields() == {"response_format": shaped}  # forwarded as sent ("schema", not "schema_")
    assert protocol.parse_chat({**CHAT, "response_format": {"type": "json_object"}}).constraint().schema == {
        "type": "object"
    }


def test_legacy_functions_are_tools_with_ids_by_position():
    request = protocol.parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
                {"role": "function", "name": "get_weather", "content": "sunny"},
            ],
            "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"},
        }
    )
    assert request.conversation()[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    assert request.tool_fields() == {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }
    assert request.constraint().legacy


def test_the_features_a_request_uses_are_the_ones_the_catalog_names():
    # The catalog sits below the protocol's users and cannot import it: the two lists are kept
    # equal here, and each feature a request can use is one of them.
    from catalog.models import GENERATION_FEATURES

    assert protocol.FEATURES == GENERATION_FEATURES
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    used = protocol.parse_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [tool],
            "response_format": {"type": "json_object"},
            "logprobs": True,
        }
    ).features()
    assert used == {"tools": "tools", "response_format": "response_format", "logprobs": "logprobs"}
    plain = protocol.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert plain.features() == {}
    assert protocol.parse_completion({"model": "m", "prompt": "x", "logprobs": 0}).features() == {
        "logprobs": "logprobs"
    }
