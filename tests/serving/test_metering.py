"""Server-side metering: a client that disconnects is charged for what was generated up to
then, and decoding stops."""

import json
import time

import httpx
import pytest
from django.conf import settings

from billing import money
from billing.models import Account, Reservation, UsageEvent
from tests.conftest import DEMO_MODEL, usage_row

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
LONG = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]


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
    assert 0 < row.completion_tokens <= generated < 400
    assert row.completion_tokens >= received
    # Charged exactly that, at its price, and nothing more is held: the ledger row's transaction
    # settled the reservation of the worst case (400 tokens).
    price = row.price
    assert row.cost == row.prompt_tokens * price.input_per_token + row.completion_tokens * price.output_per_token > 0
    account = Account.all_orgs.get(organization=tenant.org)
    assert account.credit == money.from_decimal(settings.BILLING_SIGNUP_CREDIT) - row.cost
    assert account.reserved == 0 and not Reservation.all_orgs.filter(request_id=request_id).exists()


def wait_for_latest_request(tenant, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageEvent.all_orgs.filter(organization=tenant.org).first()
        if row is not None:
            return row.request_id
        time.sleep(0.1)
    raise AssertionError("no usage event")
