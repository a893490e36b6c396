"""Dedicated endpoints are billed per replica-minute, not per token: their time reaches the ledger
once per minute (a started minute counts), the cost and usage APIs and the invoice show it, and an
endpoint whose next minute cannot be paid for is stopped, and cannot start again until it can."""

from __future__ import annotations

import time
from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from billing import services as billing
from billing.budgets import ensure_account
from billing.models import Account, Invoice, InvoiceLine, Notification, UsageEvent
from billing.rollups import month_of, roll_up
from serving import dedicated, endpoints, reconcile
from serving import services as serving
from serving.models import Backend, Endpoint, EndpointReplica
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL, session_client, usage_row
from tests.serving.test_endpoints import wait_dedicated_ready

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
DEMO_RATE = 2_000_000  # nano-units per replica-minute: the demo price (billing migration 0008)


def replica_rows(endpoint_id: str):
    return UsageEvent.all_orgs.filter(endpoint_id=endpoint_id, route="endpoints.dedicated").order_by("created_at")


def test_a_dedicated_endpoint_is_billed_per_replica_minute_and_stopped_when_unpaid(live_web, node_agent, make_tenant):
    tenant = make_tenant("dedicated")
    owner = session_client(tenant.owner)
    credit_before = ensure_account(tenant.org.pk).credit
    created = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "reserved", "model": DEMO_MODEL, "billing_mode": "dedicated", "defaults": {"max_tokens": 5}},
        format="json",
    )
    assert created.status_code == 201, created.content
    endpoint_id = created.json()["id"]
    endpoint = wait_dedicated_ready(endpoint_id)
    started = endpoint.metered_until
    assert started == dedicated.floor_minute(started) and started <= timezone.now()

    # A call runs on the endpoint's own engine, paid for by its replica-minutes: its tokens are in
    # the ledger, at no per-token price.
    client = openai.OpenAI(base_url=f"{live_web.url}/v1", api_key=tenant.key(), max_retries=0)
    client.chat.completions.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}])
    call = usage_row(_last_request(endpoint_id))
    assert call.completion_tokens > 0 and call.cost == 0

    # Two and a half minutes later the pass bills the two whole minutes, once however often it runs.
    later = started + timedelta(minutes=2, seconds=30)
    assert reconcile.meter_dedicated(now=later) == 2
    assert reconcile.meter_dedicated(now=later) == 0
    (row,) = replica_rows(endpoint_id)
    assert (row.replica_minutes, row.cost, row.created_at) == (2, 2 * DEMO_RATE, started)
    assert row.price_id is not None and row.model == DEMO_MODEL
    assert Account.all_orgs.get(organization=tenant.org).credit == credit_before - 2 * DEMO_RATE - call.cost

    costs = owner.get(
        f"/api/orgs/{tenant.org.slug}/billing/costs/",
        {"start_time": int(started.timestamp()) - 3600, "group_by": "line_item", "bucket_width": "1d"},
    ).json()
    items = [item for bucket in costs["data"] for item in bucket["results"]]
    assert {"line_item": f"{DEMO_MODEL}, replica_minutes", "exact": "0.004"} in [
        {"line_item": i["line_item"], "exact": i["amount"]["exact"]} for i in items
    ]
    metrics = owner.get(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/metrics/").json()
    assert metrics["last_day"]["replica_minutes"] == 2 and metrics["last_day"]["requests"] == 1

    # The credit left cannot pay for the minute after next: that minute is billed, then it stops.
    Account.all_orgs.filter(organization=tenant.org).update(credit=DEMO_RATE + DEMO_RATE // 2, reserved=0)
    assert reconcile.meter_dedicated(now=later + timedelta(minutes=1)) == 1
    endpoint = Endpoint.all_orgs.get(pk=endpoint_id)
    assert endpoint.status == "stopped" and endpoint.status_reason.startswith("insufficient_quota")
    assert "credit" in endpoint.status_reason
    assert Notification.all_orgs.filter(organization=tenant.org, kind="endpoint_stopped").count() == 1
    assert sum(r.replica_minutes for r in replica_rows(endpoint_id)) == 3
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}])

    # It cannot start, nor can another dedicated endpoint be created, until the budget allows.
    refused = owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/start/")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    another = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "another", "model": DEMO_MODEL, "billing_mode": "dedicated"},
        format="json",
    )
    assert another.status_code == 429
    per_token = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/", {"name": "per-token", "model": DEMO_MODEL}, format="json"
    )
    assert per_token.status_code == 201  # priced per call, which the budgets check call by call

    # The month's invoice has a replica-minute line at the replica-minute price.
    roll_up()
    from billing import invoicing

    invoice = invoicing.close_month(tenant.org.pk, month_of(started), now=started + timedelta(days=40))
    assert isinstance(invoice, Invoice)
    (line,) = InvoiceLine.all_orgs.filter(invoice=invoice, meter="replica_minutes")
    assert (line.quantity, line.unit_price, line.amount) == (3, DEMO_RATE, 3 * DEMO_RATE)


def _last_request(endpoint_id: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        row = UsageEvent.all_orgs.filter(endpoint_id=endpoint_id, route="chat.completions").first()
        if row is not None:
            return row.request_id
        time.sleep(0.1)
    raise AssertionError("the call was not metered")


def test_stopping_bills_the_started_minute_and_a_restart_within_it_does_not_bill_it_twice(make_tenant):
    tenant = make_tenant("minutes")
    backend = serving.register_backend(name="minute-replica", url="http://127.0.0.1:9", base_model=DEMO_MODEL)
    Backend.objects.filter(pk=backend.pk).update(healthy=True)
    two_minutes_ago = dedicated.floor_minute(timezone.now()) - timedelta(minutes=2)
    endpoint = Endpoint.all_orgs.create(
        id="ep-00000000000000aa",
        organization=tenant.org,
        name="two replicas",
        model=DEMO_MODEL,
        base_model_id=DEMO_MODEL,
        billing_mode="dedicated",
        status="ready",
        replicas=2,
        metered_until=two_minutes_ago,
    )
    other = serving.register_backend(name="minute-replica-2", url="http://127.0.0.1:9", base_model=DEMO_MODEL)
    for replica in (backend, other):
        EndpointReplica.all_orgs.create(
            endpoint=endpoint, backend=replica, organization=tenant.org, state=EndpointReplica.State.SERVING
        )

    before = timezone.now()
    endpoints.stop(endpoint.pk, organization_id=tenant.org.pk, actor=Actor(user=tenant.owner))
    after = timezone.now()
    endpoint.refresh_from_db()
    (row,) = replica_rows(endpoint.pk)
    # Billed through the end of the minute it stopped in: the two past minutes and the started one.
    assert endpoint.metered_until in {dedicated.ceil_minute(before), dedicated.ceil_minute(after)}
    minutes = int((endpoint.metered_until - two_minutes_ago) / timedelta(minutes=1))
    assert minutes >= 2 and row.replica_minutes == 2 * minutes and row.cost == 2 * minutes * DEMO_RATE

    # Ready again within the billed minute: billing resumes where it stopped, not a minute earlier.
    with_lock = Endpoint.all_orgs.get(pk=endpoint.pk)
    dedicated.begin(with_lock, now=endpoint.metered_until - timedelta(seconds=30))
    assert Endpoint.all_orgs.get(pk=endpoint.pk).metered_until == endpoint.metered_until


def test_replica_minute_prices_are_set_shown_and_effective_dated(make_tenant):
    tenant = make_tenant("rates")
    billing.set_price(
        model=DEMO_MODEL,
        organization_id=tenant.org.pk,
        input_per_million="0.1",
        output_per_million="0.2",
        training_per_million="1",
        replica_minute="0.0125",
        actor=Actor(),
    )
    listed = session_client(tenant.owner).get(f"/api/orgs/{tenant.org.slug}/billing/prices/").json()
    demo = next(p for p in listed["data"] if p["model"] == DEMO_MODEL)
    assert demo["dedicated_replica_minute"] == "0.0125"
    with pytest.raises(billing.BillingError):
        billing.set_price(
            model=DEMO_MODEL,
            organization_id=tenant.org.pk,
            input_per_million="0.1",
            output_per_million="0.2",
            training_per_million="1",
            replica_minute="0.0000000001",  # finer than a nano-unit
            actor=Actor(),
        )
