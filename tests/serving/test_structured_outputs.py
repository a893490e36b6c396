"""Tools, structured outputs, logprobs and n through the gateway to the real runtime, with the
official openai SDK as customers call it (no max_tokens unless the test is about it)."""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.conftest import DEMO_MODEL, usage_row
from tests.serving.test_openai_sdk import sdk

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture
def client(live_web, runtime_server, make_tenant):
    runtime_server.register()
    return sdk(live_web, make_tenant("structured").key())


def test_every_strict_schema_answer_validates_at_temperature_one(client):
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def ask(i: int):
        return client.chat.completions.create(
            model=DEMO_MODEL,
            messages=[{"role": "user", "content": f"Invent person number {i} as JSON."}],
            response_format=format_,
            temperature=1,
        )

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(ask, range(100)))
    for answer in answers:
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    # Sampled at temperature one, the small demo model now and then rambles inside a string until
    # the default cap: that answer says "length" and is still closed into a valid document.
    reasons = [a.choices[0].finish_reason for a in answers]
    assert set(reasons) <= {"stop", "length"} and reasons.count("stop") >= 90, reasons
    assert len({a.choices[0].message.content for a in answers}) > 50  # sampled, not one answer repeated

    anything = client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, response_format={"type": "json_object"}, temperature=0
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_a_schema_answer_that_would_run_past_max_tokens_closes_and_validates(client):
    # Asked for a long story in one string, the model would fill any budget: its last tokens
    # close the string and the object instead of leaving half a JSON document.
    story = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "story": {"type": "string"}, "words": {"type": "integer"}},
        "required": ["title", "story", "words"],
        "additionalProperties": False,
    }
    format_ = {"type": "json_schema", "json_schema": {"name": "story", "schema": story, "strict": True}}
    for stream in (False, True):
        answer = client.chat.completions.create(
            model=DEMO_MODEL,
            messages=[{"role": "user", "content": "Write a very long story about a lighthouse keeper, as JSON."}],
            response_format=format_,
            temperature=1,
            max_tokens=60,
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        if stream:
            chunks = list(answer)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            usage = chunks[-1].usage
        else:
            content, finish, usage = answer.choices[0].message.content, [answer.choices[0].finish_reason], answer.usage
        assert finish == ["stop"] and usage.completion_tokens <= 60, (content, usage)
        document = json.loads(content)
        jsonschema.validate(document, story)
        assert document["title"] or document["story"]  # written, then closed


def test_a_forced_tool_call_parses_validates_and_streams_the_same(client):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    plain = client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=forced, temperature=0
    )
    choice = plain.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None  # forced by name: "stop", as OpenAI
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    fragments, ids, finish = [], set(), None
    for chunk in client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=forced, temperature=0, stream=True
    ):
        for delta_call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            assert delta_call.index == 0
            ids.add(delta_call.id) if delta_call.id else None
            fragments.append(delta_call.function.arguments or "")
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert len(fragments) > 3  # arguments arrive in pieces ...
    assert "".join(fragments) == call.function.arguments  # ... that join to the non-streamed arguments
    assert len(ids) == 1 and finish == "stop"

    required = client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", temperature=1
    )
    assert required.choices[0].finish_reason == "tool_calls"
    [call] = required.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_a_tool_round_trip_and_the_legacy_functions(client):
    first = client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK_WEATHER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    answer = client.chat.completions.create(
        model=DEMO_MODEL, messages=history, tools=[WEATHER], temperature=0, max_tokens=40
    )
    assert answer.choices[0].message.content  # told the result, it answers in text (auto)
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens

    legacy = client.chat.completions.create(
        model=DEMO_MODEL,
        messages=ASK_WEATHER,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        temperature=0,
    )
    choice = legacy.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None  # forced by name
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER["function"]["parameters"])


def test_logprobs_and_several_choices_are_served_and_billed(client):
    answer = client.chat.completions.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, logprobs=True, top_logprobs=3, temperature=0, max_tokens=12
    )
    entries = answer.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == answer.choices[0].message.content
    assert len(entries) == answer.usage.completion_tokens
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.logprob  # greedy: the chosen token is the most likely
        assert bytes(entry.bytes).decode() == entry.token
    streamed = [
        e
        for chunk in client.chat.completions.create(
            model=DEMO_MODEL, messages=ASK_WEATHER, logprobs=True, temperature=0, max_tokens=12, stream=True
        )
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in entries]

    text = client.completions.create(model=DEMO_MODEL, prompt="The capital of France is", logprobs=2, max_tokens=5)
    assert "".join(text.choices[0].logprobs.tokens) == text.choices[0].text
    assert all(len(top) == 2 for top in text.choices[0].logprobs.top_logprobs)

    several = client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL, messages=ASK_WEATHER, n=3, seed=7, max_tokens=10
    )
    body = several.parse()
    assert [c.index for c in body.choices] == [0, 1, 2]
    assert len({c.message.content for c in body.choices}) > 1  # the choices differ ...
    again = client.chat.completions.create(model=DEMO_MODEL, messages=ASK_WEATHER, n=3, seed=7, max_tokens=10)
    assert [c.message.content for c in again.choices] == [c.message.content for c in body.choices]  # ... reproducibly
    row = usage_row(several.headers["x-request-id"])
    assert row.completion_tokens == body.usage.completion_tokens <= 30
    assert row.prompt_tokens == body.usage.prompt_tokens  # the prompt once, not per choice


def test_bad_schemas_and_tool_choices_are_400s_naming_the_parameter(client):
    cases = [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
            "response_format.json_schema.schema.type",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"format": "weird"}}}},
            "response_format",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER] * 2}, "tools"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": f"f{i}", "parameters": {"type": "object"}},
                    }
                    for i in range(129)
                ]
            },
            "tools",
        ),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=DEMO_MODEL, messages=ASK_WEATHER, **extra)
        assert refused.value.param == param, (extra, refused.value.body)
