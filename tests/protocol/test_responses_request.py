"""A Responses API request as the protocol parses it, and the chat request it is served as."""

from __future__ import annotations

import pytest

from serving.protocol import ProtocolError
from serving.protocol import responses as protocol


def test_a_response_request_becomes_the_chat_request_it_is_served_as():
    request = protocol.parse(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"type": "message", "role": "user", "content": "Hi"},
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": "Again"}]},
            ],
            "max_output_tokens": 9,
            "temperature": 0,
            "store": True,  # accepted; nothing is stored
            "tool_choice": "auto",
            "text": {"format": {"type": "text"}},
        }
    )
    assert request.to_chat() == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Again"},
        ],
        "stream": False,
        "max_tokens": 9,
        "temperature": 0.0,
    }
    plain = protocol.parse({"model": "m", "input": "Hi", "stream": True}).to_chat()
    assert plain == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"tools": [{"type": "function", "name": "f g"}]}, "tools.0.name", "invalid_value"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": 1}}]},
            "tools.0.parameters.type",
            "invalid_value",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),  # no tools
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.name", "missing_required_parameter"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id", "missing_required_parameter"),
        ({"input": [{"type": "web_search_call"}]}, "input", "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"frequency_penalty": 1}, "frequency_penalty", "unknown_parameter"),
    ],
)
def test_what_is_not_served_is_refused_by_name(extra, param, code):
    with pytest.raises(ProtocolError) as refused:
        protocol.parse({"model": "m", "input": "Hi", **extra})
    assert (refused.value.param, refused.value.code) == (param, code), refused.value.message


def test_function_calls_and_their_outputs_become_chat_tool_calls():
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    request = protocol.parse(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}", "id": "fc_1"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
            ],
            "tools": [tool],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        }
    )
    chat = request.to_chat()
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}} for i in (1, 2)
    ]
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": tool["parameters"]}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    output = protocol.output_of(
        {"content": None, "tool_calls": [{"id": "call_x", "function": {"name": "get_weather", "arguments": "{}"}}]},
        "msg_1",
    )
    assert output == [protocol.function_call_item("call_x", "get_weather", "{}")]


def test_a_cut_off_answer_is_incomplete_with_its_reason():
    request = protocol.parse({"model": "m", "input": "Hi"})
    done = protocol.response_object(request, "resp_1", finish_reason="length", usage=protocol.usage_of({}))
    assert (done["status"], done["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert protocol.response_object(request, "resp_1", finish_reason="stop")["incomplete_details"] is None
