"""The runtime's reading of generated text as content or tool calls, however the text is cut."""

import pytest

from serving.runtime.grammars import not_starting_with
from serving.runtime.tool_calls import CallParser

TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "note": "a}b"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def read(text: str, required: bool, step: int) -> tuple[list[tuple], CallParser]:
    parser = CallParser(required)
    pieces = []
    for i in range(0, len(text), step):
        pieces += parser.feed(text[i : i + step])
    return pieces + parser.finish(), parser


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_calls_come_out_whole_however_the_text_is_cut(step):
    pieces, parser = read(TWO_CALLS, required=False, step=step)
    assert [(c["name"], c["arguments"]) for c in parser.calls] == [
        ("get_weather", '{"city": "Paris", "note": "a}b"}'),
        ("get_time", "{}"),
    ]
    assert [p[:2] for p in pieces if p[0] == "call"] == [("call", 0), ("call", 1)]
    joined = {0: "", 1: ""}
    for piece in pieces:
        if piece[0] == "arguments":
            joined[piece[1]] += piece[2]
    assert joined == {0: parser.calls[0]["arguments"], 1: parser.calls[1]["arguments"]}
    assert parser.content == ""


@pytest.mark.parametrize("text", ["Hello <tool_call>", "<tool_response> done", "<tool", ""])
def test_text_that_does_not_begin_a_call_is_content(text):
    pieces, parser = read(text, required=False, step=1)
    assert parser.calls == [] and parser.content == text
    assert "".join(p[1] for p in pieces) == text


def test_a_call_cut_short_keeps_the_arguments_it_had():
    _, parser = read('<tool_call>\n{"name": "f", "arguments": {"a": "x}\n</to', required=True, step=3)
    assert parser.calls[0]["arguments"] == '{"a": "x}\n</to'


def test_the_text_branch_of_auto_excludes_exactly_the_call_tag():
    import re

    pattern = re.compile(not_starting_with("<tool_call>") + r"\Z")
    for text in ["a", "<", "<tool", "<tool_cal", "<tool_response>", "<tool_calx", "x<tool_call>"]:
        assert pattern.match(text), text
    for text in ["<tool_call>", "<tool_call>\n{"]:
        assert not pattern.match(text), text
