"""The gateway against upstreams other than our runtime: it validates every request once and
forwards only what it understands, always with an explicit max_tokens; a provider that reports
usage only at the end is billed the relayed tokens on a disconnect; every failure before the first
byte fails over, and every failure is an OpenAI error that closes the books."""

import time

import httpx
import pytest

from billing.models import UsageEvent
from serving import services
from serving.models import Backend
from tests.conftest import DEMO_MODEL, nothing_held, usage_row
from tests.serving.stub_upstream import Upstream

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
SAY = [{"role": "user", "content": "Say hello."}]


def register(name: str, upstream: Upstream) -> Backend:
    backend = services.register_backend(name=name, url=upstream.url, base_model=DEMO_MODEL, engine="openai")
    Backend.objects.filter(pk=backend.pk).update(healthy=True)
    return backend


@pytest.fixture
def key(make_tenant):
    return make_tenant("upstreams").key()


def post(web, key, body) -> httpx.Response:
    return httpx.post(
        web.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_only_understood_parameters_reach_any_engine(live_web, key):
    provider = Upstream("provider", words=3, delay=0)
    register("provider", provider)
    base = {"model": DEMO_MODEL, "messages": SAY}
    refused = {
        "n": {"n": 9},
        "best_of": {"best_of": 2},
        "chat_template": {"chat_template": "{{ evil }}"},
        "guided_json": {"guided_json": {}},
        "logprobs": {"logprobs": 1},
        "tools.0.function.parameters": {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        "temperature": {"temperature": "hot"},
        "seed": {"seed": 2**63},
        "messages.0.content": {"messages": [{"role": "user", "content": {"nested": "x"}}]},
    }
    for param, extra in refused.items():
        response = post(live_web, key, {**base, **extra})
        assert response.status_code == 400, (param, response.text)
        assert response.json()["error"]["param"] == param, response.text
    deep = {**base, "metadata": {"a": [[[[[[[[{}]]]]]]]]}}
    assert post(live_web, key, deep).status_code == 400
    assert provider.requests == []  # nothing refused was sent upstream

    ok = post(live_web, key, {**base, "temperature": 0.5, "user": "u-1", "metadata": {"team": "a"}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "w0 w1 w2 ", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    sent = provider.requests[-1]
    assert set(sent) == {"model", "messages", "stream", "stream_options", "max_tokens", "temperature"}
    assert sent["max_tokens"] == 256  # the demo model's default cap: sent even when the caller set none
    assert sent["stream_options"] == {"include_usage": True}


def test_a_disconnect_from_a_usage_at_the_end_provider_is_billed_the_completion_cap(live_web, key):
    """Such a provider's count is never seen when the client leaves first; it may have generated
    all it was allowed (and bills us for it): the cap sent upstream is charged."""
    register("slow-provider", Upstream("provider", words=200, delay=0.05))
    body = {"model": DEMO_MODEL, "messages": SAY, "stream": True, "max_tokens": 150}
    pieces = 0
    with httpx.stream(
        "POST", live_web.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                pieces += 1
            if pieces == 10:
                break
    row = usage_row(request_id)
    assert row.outcome == UsageEvent.Outcome.CLIENT_DISCONNECTED
    assert row.completion_tokens == 150
    assert row.prompt_tokens > 0


def test_a_client_that_leaves_before_the_upstream_answers_gets_a_ledger_row_and_frees_its_hold(live_web, make_tenant):
    tenant = make_tenant("early-leaver")
    register("slow-headers", Upstream("provider", words=5, delay=0, head_delay=5))
    body = {"model": DEMO_MODEL, "messages": SAY, "max_tokens": 40}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            live_web.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {tenant.key()}"},
            timeout=httpx.Timeout(30, read=1.0),
        )
    deadline = time.monotonic() + 15
    while not (row := UsageEvent.all_orgs.filter(organization=tenant.org).first()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert row is not None, "no ledger row for a request the client left"
    assert row.outcome == UsageEvent.Outcome.CLIENT_DISCONNECTED
    assert row.completion_tokens == 40  # the provider's count was never seen: the cap it was sent
    assert nothing_held(tenant.org)


def test_failures_before_the_first_byte_fail_over(live_web, key):
    body = {"model": DEMO_MODEL, "messages": SAY, "max_tokens": 3}
    failing, resetting = Upstream("fail"), Upstream("reset")
    register("failing", failing)
    register("resetting", resetting)
    alone = post(live_web, key, body)
    assert alone.status_code == 502, alone.text
    assert alone.headers["content-type"] == "application/json"
    assert alone.json()["error"]["type"] == "server_error"
    assert usage_row(alone.headers["x-request-id"]).outcome == UsageEvent.Outcome.UPSTREAM_ERROR
    assert failing.requests and resetting.requests  # both were tried
    register("healthy", Upstream("provider", words=3, delay=0))
    for _ in range(4):  # whichever order the replicas are tried in, the healthy one answers
        response = post(live_web, key, body)
        assert response.status_code == 200, response.text
        assert usage_row(response.headers["x-request-id"]).outcome == UsageEvent.Outcome.OK


def test_no_html_error_page_on_v1(live_web, key):
    for method, path in [("GET", "/v1/nowhere"), ("POST", "/v1/files/x/content"), ("DELETE", "/v1/chat/completions")]:
        response = httpx.request(method, live_web.url + path, headers={"Authorization": f"Bearer {key}"})
        assert response.headers["content-type"].startswith("application/json"), (path, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}
    garbage = httpx.post(
        live_web.url + "/v1/chat/completions",
        content=b'{"model": "x", "messages": [' * 3000,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"


def test_requests_without_max_tokens_cannot_overrun_the_token_limit(live_web, make_tenant):
    """Key TPM 2,000, five concurrent requests that set no max_tokens, against a provider that
    would write 1,000 tokens each if let: together they use no more than the limit."""
    from concurrent.futures import ThreadPoolExecutor

    from tenancy import services as tenancy
    from tenancy.audit import Actor

    tenant = make_tenant("tpm")
    issued = tenancy.create_api_key(
        organization_id=tenant.org.pk, name="tpm", created_by_id=tenant.owner.pk, actor=Actor(user=tenant.owner)
    )
    tenancy.set_key_limits(issued.key.pk, organization_id=tenant.org.pk, rpm=None, tpm=2000, actor=Actor())
    register("verbose", Upstream("provider", words=1000, delay=0.001))
    body = {"model": DEMO_MODEL, "messages": SAY}
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: post(live_web, issued.plaintext, body), range(5)))
    served = [a for a in answers if a.status_code == 200]
    assert served and all(a.status_code in (200, 429) for a in answers)
    rows = [usage_row(a.headers["x-request-id"]) for a in served]
    assert sum(r.prompt_tokens + r.completion_tokens for r in rows) <= 2000


def test_a_model_that_is_not_up_yet_answers_503_with_retry_after_and_bills_nothing(live_web, key):
    import socket

    with socket.socket() as s:  # a port nobody listens on once this closes, like a runtime still loading
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    backend = services.register_backend(name="loading", url=url, base_model=DEMO_MODEL)
    Backend.objects.filter(pk=backend.pk).update(healthy=True)
    log_before = len(live_web.log())
    response = post(live_web, key, {"model": DEMO_MODEL, "messages": SAY})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "model_unavailable"
    time.sleep(1)
    assert not UsageEvent.all_orgs.filter(request_id=response.headers["x-request-id"]).exists()
    logged = live_web.log()[log_before:]
    assert "WARNING serving.gateway no replica" in logged and " ERROR " not in logged, logged


def test_a_stream_that_outlives_the_reservation_ttl_keeps_its_hold(make_tenant, tmp_path):
    """The reaper gives back holds that outlive BILLING_RESERVATION_TTL_SECONDS unrenewed; a web
    process renews its own while it lives, so a stream running past the TTL still holds its money:
    a second request the credit cannot cover beside it is refused, and the credit never goes
    below zero."""
    import threading

    from billing import budgets, pricing
    from billing.models import Account
    from serving.gateway import inference, validation
    from tests.conftest import start_web

    web = start_web({"BILLING_RESERVATION_TTL_SECONDS": "3", "METERING_DRAIN_SECONDS": "0.2"})
    try:
        tenant = make_tenant("long-stream")
        key = tenant.key()
        register("long-provider", Upstream("provider", words=80, delay=0.1))  # 8 s
        body = {"model": DEMO_MODEL, "messages": SAY, "stream": True, "max_tokens": 80}
        worst = pricing.current(tenant.org.pk, DEMO_MODEL).cost(
            prompt_tokens=inference._prompt_bound(validation.check(dict(body), validation.CHAT)), completion_tokens=80
        )
        budgets.ensure_account(tenant.org.pk)
        Account.all_orgs.filter(organization=tenant.org).update(credit=worst * 3 // 2)
        streamed: list[str] = []

        def stream() -> None:
            with httpx.stream(
                "POST",
                web.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ) as response:
                streamed.extend(response.iter_lines())

        first = threading.Thread(target=stream)
        first.start()
        time.sleep(5)  # past the TTL, the stream still running
        assert first.is_alive()
        budgets.release_expired()  # the reaper's pass
        second = post(web, key, {**body, "stream": False})
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "insufficient_quota"
        first.join(30)
        assert "data: [DONE]" in streamed
        assert nothing_held(tenant.org)
        account = Account.all_orgs.get(organization=tenant.org)
        rows = UsageEvent.all_orgs.filter(organization=tenant.org)
        assert rows.count() == 1 and rows.get().completion_tokens == 80
        assert account.credit == worst * 3 // 2 - rows.get().cost >= 0
    finally:
        web.process.terminate()
        web.process.wait(30)


def test_usage_the_spool_cannot_take_is_kept_and_new_requests_are_refused(make_tenant):
    """The metering spool's disk fails (its file is /dev/full, which refuses every write with
    ENOSPC): the request being answered keeps its record in memory, which the drainer writes into
    the ledger; new requests are refused with 503 until the spool has had a few seconds to recover,
    rather than served unbilled."""
    import os

    from billing import outbox
    from billing import services as billing
    from tests.conftest import key_client

    register("spool-provider", Upstream("provider", words=3, delay=0))
    tenant = make_tenant("full-disk")
    client = key_client(tenant.key())
    body = {"model": DEMO_MODEL, "messages": SAY}
    spool = outbox.spool()
    spool.seal()
    with spool._lock:
        spool._fd = os.open("/dev/full", os.O_WRONLY)
    served = client.post("/v1/chat/completions", body, format="json")
    assert served.status_code == 200, served.content
    refused = client.post("/v1/chat/completions", body, format="json")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "metering_unavailable"
    assert refused["retry-after"] == "5"
    billing.drain_outbox()
    row = UsageEvent.all_orgs.get(request_id=served["x-request-id"])
    assert (row.prompt_tokens, row.completion_tokens) == (9, 3)
    assert not UsageEvent.all_orgs.filter(request_id=refused["x-request-id"]).exists()
    time.sleep(outbox.REFUSE_AFTER_FAILURE_SECONDS)
    again = client.post("/v1/chat/completions", body, format="json")  # the spool has a new, real file
    assert again.status_code == 200
    billing.drain_outbox()
    assert UsageEvent.all_orgs.filter(request_id=again["x-request-id"]).exists()


def test_a_feature_the_catalog_says_a_model_lacks_is_a_400_naming_the_parameter(live_web, key):
    from catalog.models import BaseModel

    provider = Upstream("plain-provider", words=3, delay=0)
    register("plain-provider", provider)
    BaseModel.objects.filter(pk=DEMO_MODEL).update(features=["logprobs"])  # an upstream with neither tools nor JSON
    base = {"model": DEMO_MODEL, "messages": SAY}
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    lacking = {
        "tools": {"tools": [weather]},
        "functions": {"functions": [{"name": "weather", "parameters": {"type": "object"}}]},
        "response_format": {"response_format": {"type": "json_object"}},
    }
    for param, extra in lacking.items():
        response = post(live_web, key, {**base, **extra})
        assert response.status_code == 400, (param, response.text)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_parameter"), response.text
        assert DEMO_MODEL in error["message"]
    assert provider.requests == []
    # What it supports, and a plain text format, still go through.
    for extra in ({"logprobs": True}, {"response_format": {"type": "text"}}):
        assert post(live_web, key, {**base, **extra}).status_code == 200
