"""The official openai SDK, unchanged, against a live web process and the real runtime."""

import time

import openai
import pytest

from billing.models import UsageEvent
from tenancy import services
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def stack(live_web, runtime_server, make_tenant):
    runtime_server.register()
    tenant = make_tenant("sdk")
    return live_web, tenant


def sdk(live_web, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_web.url + "/v1", api_key=key, max_retries=0, timeout=120)


def wait_for_ledger(count: int, timeout: float = 10.0) -> list[UsageEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(UsageEvent.all_orgs.order_by("id"))
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} usage events, found {UsageEvent.all_orgs.count()}")


def test_models_chat_stream_and_completions_with_exact_usage(stack):
    web, tenant = stack
    client = sdk(web, tenant.key())
    assert [m.id for m in client.models.list()] == ["all-minilm-l6-v2", DEMO_MODEL]

    plain = client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, temperature=0, max_tokens=16)
    assert plain.object == "chat.completion" and plain.model == DEMO_MODEL
    assert "Paris" in plain.choices[0].message.content
    assert plain.choices[0].finish_reason == "stop"

    chunks = list(
        client.chat.completions.create(
            model=DEMO_MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert streamed_text == plain.choices[0].message.content
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert len({c.id for c in chunks}) == 1

    no_usage = list(
        client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, temperature=0, max_tokens=4, stream=True)
    )
    assert all(c.usage is None and c.choices for c in no_usage)

    text = client.completions.create(model=DEMO_MODEL, prompt="One, two, three,", temperature=0, max_tokens=6)
    assert text.object == "text_completion" and text.choices[0].text.startswith(" four")

    rows = wait_for_ledger(4)
    assert [(r.route, r.streamed, r.outcome) for r in rows] == [
        ("chat.completions", False, "ok"),
        ("chat.completions", True, "ok"),
        ("chat.completions", True, "ok"),
        ("completions", False, "ok"),
    ]
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
    )
    assert (rows[1].prompt_tokens, rows[1].completion_tokens) == (rows[0].prompt_tokens, rows[0].completion_tokens)
    assert rows[3].completion_tokens == text.usage.completion_tokens
    assert all(r.organization_id == tenant.org.pk and r.backend == "test-runtime" for r in rows)
    assert all(r.time_to_first_token_ms is not None and r.latency_ms >= r.time_to_first_token_ms for r in rows)


def test_errors_map_to_the_sdk_exceptions(stack, django_capture_on_commit_callbacks):
    web, tenant = stack
    client = sdk(web, tenant.key())
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, n=9)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model=DEMO_MODEL,
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    assert tools.value.param == "tool_choice"
    with pytest.raises(openai.AuthenticationError):
        sdk(web, "sk-" + "x" * 43).chat.completions.create(model=DEMO_MODEL, messages=QUESTION)
    scoped = sdk(web, tenant.key(scopes=["models:read"]))
    assert [m.id for m in scoped.models.list()] == ["all-minilm-l6-v2", DEMO_MODEL]
    with pytest.raises(openai.PermissionDeniedError) as scope:
        scoped.chat.completions.create(model=DEMO_MODEL, messages=QUESTION)
    assert scope.value.code == "insufficient_scope"

    issued = services.create_api_key(organization_id=tenant.org.pk, name="revoked", actor=Actor())
    services.revoke_api_key(issued.key.pk, organization_id=tenant.org.pk, actor=Actor())
    with pytest.raises(openai.AuthenticationError) as revoked:
        sdk(web, issued.plaintext).chat.completions.create(model=DEMO_MODEL, messages=QUESTION)
    assert revoked.value.code == "api_key_revoked"


def test_over_the_limit_is_429_with_retry_after(stack):
    web, tenant = stack
    issued = services.create_api_key(organization_id=tenant.org.pk, name="limited", actor=Actor())
    services.set_key_limits(issued.key.pk, organization_id=tenant.org.pk, rpm=2, tpm=None, actor=Actor())
    client = sdk(web, issued.plaintext)
    wait_for_a_fresh_minute()
    for _ in range(2):
        client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, max_tokens=1)
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.code == "rate_limit_exceeded"
    assert "requests per minute on this API key" in limited.value.message
    assert len(wait_for_ledger(2)) == 2  # the refused call reached no model and cost nothing


def wait_for_a_fresh_minute(margin: float = 8.0) -> None:
    """Limits use fixed minute windows: do not straddle a boundary."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.1)
