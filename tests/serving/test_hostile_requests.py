"""One tenant's hostile-but-valid sampling requests, in the same runtime batch as another
tenant's long stream, cannot hurt it: the stream finishes complete and identical to running
alone, and each hostile request gets a 200 or a clear 400."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
LONG = {
    "model": DEMO_MODEL,
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    "temperature": 0,
    "max_tokens": 64,
    "stream": True,
}
SAY = [{"role": "user", "content": "Say something."}]
HOSTILE = [
    {"temperature": 1e-300},
    {"temperature": 5e-324, "top_p": 1e-300},
    {"top_p": 1e-300, "temperature": 2},
    {"temperature": 1e-4, "logit_bias": {str(i): (100 if i % 2 else -100) for i in range(300)}},
    {"presence_penalty": -2, "frequency_penalty": -2, "temperature": 1e-3},
    {"seed": 2**63 - 1, "temperature": 2},
    {"seed": -(2**63)},
    {"stop": ["x" * 500, "\u00e9" * 500, "\n", ""]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "\U0001f600" * 50 + "\u0000"}]},
    {"max_tokens": 1, "stream": True},
    {"stream": True, "stream_options": {"include_usage": True}, "temperature": 1e-200},
    # Grammars beside the victim's row: a huge enum, a schema that recurses into itself, a forced
    # call on eight rows.
    {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "e", "schema": {"enum": ["v" * 40 + str(i) for i in range(2000)]}},
        }
    },
    {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"$ref": "#"}}}},
        },
        "temperature": 2,
    },
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a|aa)*b"}}},
                },
            }
        ],
        "tool_choice": "required",
        "n": 8,
    },
]
# A schema whose every value is infinite: the grammar hits its limit mid-answer, a 400 for its sender.
ENDLESS = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
INVALID = [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": ENDLESS}}, "max_tokens": 4000},
    {"n": 9},
    {"temperature": 2.5},
    {"top_p": -1e-300},
    {"logit_bias": {"99999999": 1}},
    {"max_tokens": 0},
]


def stream_text(url: str, key: str) -> str:
    parts = []
    with httpx.stream("POST", url, json=LONG, headers={"Authorization": f"Bearer {key}"}, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = orjson.loads(line[6:])
                assert "error" not in event, event
                parts += [c["delta"].get("content") or "" for c in event["choices"]]
            elif line == "data: [DONE]":
                return "".join(parts)
    raise AssertionError("the stream ended without [DONE]")


def call(url: str, key: str, overrides: dict) -> httpx.Response:
    body = {"model": DEMO_MODEL, "messages": SAY, "max_tokens": 8, **overrides}
    return httpx.post(url, content=orjson.dumps(body), headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_hostile_sampling_in_the_same_batch_cannot_hurt_another_tenant(live_web, runtime_server, make_tenant):
    runtime_server.register()
    alice, mallory = make_tenant("victim").key(), make_tenant("hostile").key()
    url = live_web.url + "/v1/chat/completions"
    expected = stream_text(url, alice)
    with ThreadPoolExecutor(8) as pool:
        victim = pool.submit(stream_text, url, alice)
        answers = list(pool.map(lambda o: call(url, mallory, o), HOSTILE + INVALID))
        assert victim.result() == expected
    for overrides, response in zip(HOSTILE, answers[: len(HOSTILE)], strict=True):
        assert response.status_code == 200, (overrides, response.text)
        if overrides.get("stream"):
            assert "data: [DONE]" in response.text and '"error"' not in response.text, response.text
        else:
            assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    for overrides, response in zip(INVALID, answers[len(HOSTILE) :], strict=True):
        assert response.status_code == 400, (overrides, response.text)
        assert response.json()["error"]["param"] == next(iter(overrides)), response.text
    assert stream_text(url, alice) == expected  # and the runtime still serves
