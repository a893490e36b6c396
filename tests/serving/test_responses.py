"""The Responses API, stateless, through the official SDK: `client.responses.create` answers as the
chat path does (same model, metering, limits), streamed as the `response.*` event sequence, and
what is not supported (stored responses, tools, structured text) is refused by name."""

from __future__ import annotations

import openai
import pytest

from billing.models import UsageEvent
from tests.conftest import DEMO_MODEL, usage_row
from tests.serving.test_openai_sdk import sdk, stack  # noqa: F401 - the fixture
from tests.serving.test_pool_replicas import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_a_response_is_the_chat_answer_metered_as_responses(stack):  # noqa: F811
    web, tenant = stack
    client = sdk(web, tenant.key())
    answer = client.responses.create(
        model=DEMO_MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        temperature=0,
        max_output_tokens=32,
    )
    assert answer.object == "response" and answer.id.startswith("resp_") and answer.model == DEMO_MODEL
    assert "Paris" in answer.output_text
    assert answer.status in ("completed", "incomplete") and answer.output[0].role == "assistant"
    chat = client.chat.completions.create(
        model=DEMO_MODEL,
        messages=[
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        temperature=0,
        max_tokens=32,
    )
    assert answer.output_text == chat.choices[0].message.content  # the same request, served as chat
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    row = usage_row(answer._request_id)
    assert (row.route, row.prompt_tokens, row.completion_tokens) == (
        "responses",
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )
    assert row.cost == answer.usage.input_tokens * 100 + answer.usage.output_tokens * 200

    # A conversation as input items, cut off by max_output_tokens: incomplete, and says why.
    short = client.responses.create(
        model=DEMO_MODEL,
        input=[
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Tell me a long story about it."}]},
        ],
        max_output_tokens=3,
    )
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.usage.output_tokens == 3


def test_a_streamed_response_is_the_event_sequence_the_sdk_assembles(stack):  # noqa: F811
    web, tenant = stack
    client = sdk(web, tenant.key())
    ask = {"instructions": "Answer in one short sentence.", "input": "What is the capital of France?"}
    with client.responses.stream(model=DEMO_MODEL, temperature=0, max_output_tokens=64, **ask) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == "response.completed" and final.status == "completed"
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1 and "Paris" in final.output_text and final.usage.output_tokens >= deltas
    row = UsageEvent.all_orgs.get(organization=tenant.org, route="responses")
    assert (row.prompt_tokens, row.completion_tokens, row.streamed) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
        True,
    )
    # Cut off by its limit: the sequence ends with response.incomplete, as OpenAI's does.
    events = list(
        client.responses.create(model=DEMO_MODEL, input="Tell me a long story.", max_output_tokens=4, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": "objekt"}}]},
            "tools.0.parameters.type",
        ),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"input": [{"type": "file_search_call", "id": "c"}]}, "input"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": ""}, "input"),
    ],
)
def test_what_is_not_supported_is_refused_by_name(stack, extra, param):  # noqa: F811
    web, tenant = stack
    client = sdk(web, tenant.key())
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**{"model": DEMO_MODEL, "input": "Hi", **extra})
    assert refused.value.body["param"] == param
    assert not UsageEvent.all_orgs.filter(organization=tenant.org).exists()


def test_a_client_that_leaves_a_streamed_response_is_billed_what_was_generated(stack, runtime_server):  # noqa: F811
    web, tenant = stack
    client = sdk(web, tenant.key())
    before = runtime_server.generated_tokens()
    stream = client.responses.create(model=DEMO_MODEL, input="Tell me a very long story about the sea.", stream=True)
    deltas = 0
    for event in stream:
        deltas += event.type == "response.output_text.delta"
        if deltas == 3:
            break
    stream.close()
    row = wait_until(
        lambda: UsageEvent.all_orgs.filter(organization=tenant.org, outcome="client_disconnected").first(), 20, "billed"
    )
    assert row.route == "responses" and 3 <= row.completion_tokens < 256
    assert row.completion_tokens == runtime_server.generated_tokens() - before  # the runtime's own count
