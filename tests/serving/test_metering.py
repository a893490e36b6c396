"""Server-side metering: a client that disconnects is charged for what the model server generated
up to then (not what the gateway had read), and decoding stops."""

import json
import time

import httpx
import pytest
from django.conf import settings

from billing import money
from billing.models import Account, UsageEvent
from tests.conftest import DEMO_MODEL, nothing_held, usage_row

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
LONG = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
ANSWER = 60  # tokens generated for a reader that stalls


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_is_charged_for_what_was_generated(live_web, runtime_server, make_tenant, stream):
    runtime_server.register()
    tenant = make_tenant("meter")
    before = runtime_server.generated_tokens()
    body = {"model": DEMO_MODEL, "messages": LONG, "temperature": 0, "max_tokens": 400, "stream": stream}
    headers = {"Authorization": f"Bearer {tenant.key()}"}
    received = 0
    if stream:
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", live_web.url + "/v1/chat/completions", json=body, headers=headers) as response,
        ):
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    received += bool(delta.get("content"))
                if received == 5:
                    break  # leaving the block closes the connection mid-stream
    else:
        # A plain answer only comes when complete: hang up while it is being generated.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                live_web.url + "/v1/chat/completions", json=body, headers=headers, timeout=httpx.Timeout(60, read=2.0)
            )
        request_id = wait_for_latest_request(tenant)
    row = usage_row(request_id)
    time.sleep(1.0)  # decoding stops within a step or two of the hang-up
    generated = runtime_server.generated_tokens() - before
    assert row.outcome == "client_disconnected" and row.streamed is stream
    assert row.prompt_tokens > 0
    assert 0 < row.completion_tokens == generated < 400
    assert row.completion_tokens >= received
    # Charged exactly that, at its price, and nothing more is held: the ledger row's transaction
    # settled the reservation of the worst case (400 tokens).
    price = row.price
    assert row.cost == row.prompt_tokens * price.input_per_token + row.completion_tokens * price.output_per_token > 0
    account = Account.all_orgs.get(organization=tenant.org)
    assert account.credit == money.from_decimal(settings.BILLING_SIGNUP_CREDIT) - row.cost
    assert nothing_held(tenant.org)


def wait_for_latest_request(tenant, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageEvent.all_orgs.filter(organization=tenant.org).first()
        if row is not None:
            return row.request_id
        time.sleep(0.1)
    raise AssertionError("no usage event")


def test_a_slow_reader_is_billed_what_the_model_server_generated(runtime_server, make_tenant):
    """A client that takes the headers and the first chunk, then reads nothing, then hangs up: the
    gateway's ASGI app is driven directly, with a `send` that stops returning (as a client whose
    window is full). The runtime generated the answer into the buffers between it and the gateway
    (its row waits once 16 events are unread there); the bill is that count, not the tokens the
    gateway had relayed."""
    import asyncio

    from billing import services as billing
    from billing.holds import holds
    from maas.asgi import application
    from serving.gateway import metering, upstream

    runtime_server.register()
    tenant = make_tenant("slow-reader")
    before = runtime_server.generated_tokens()
    body = json.dumps(
        {"model": DEMO_MODEL, "messages": LONG, "temperature": 0, "max_tokens": ANSWER, "stream": True}
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {tenant.key()}".encode()),
        ],
    }
    sent: list[dict] = []

    async def scenario() -> None:
        hang_up = asyncio.Event()
        stalled = asyncio.Event()
        bodies = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if bodies:
                return bodies.pop()
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if sum(m["type"] == "http.response.body" for m in sent) >= 2:
                stalled.set()
                await asyncio.Event().wait()  # the client reads no more

        served = asyncio.create_task(application(scope, receive, send))
        await asyncio.wait_for(stalled.wait(), 60)
        deadline = time.monotonic() + 90
        while await asyncio.to_thread(runtime_server.generated_tokens) - before < ANSWER:
            assert time.monotonic() < deadline, "the runtime stopped generating for a stalled reader"
            await asyncio.sleep(0.2)
        hang_up.set()
        await asyncio.wait_for(served, 30)
        await metering.drain()
        await upstream.session().close()

    asyncio.run(scenario())
    holds.maintain(everything=True)  # as the web process does when it stops
    billing.drain_outbox()
    headers = dict(sent[0]["headers"])
    row = usage_row(headers[b"x-request-id"].decode())
    relayed = sum(m.get("body", b"").count(b'"content"') for m in sent[1:])
    assert relayed < 5
    assert runtime_server.generated_tokens() - before == ANSWER
    assert row.outcome == "client_disconnected"
    assert row.completion_tokens == ANSWER
    account = Account.all_orgs.get(organization=tenant.org)
    assert account.credit == money.from_decimal(settings.BILLING_SIGNUP_CREDIT) - row.cost
    assert nothing_held(tenant.org, timeout=0)
