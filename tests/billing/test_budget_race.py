"""Budgets under concurrency, through a real web process: 200 simultaneous completions against a
prepaid credit that covers about 50 of them never overspend, every request is served or refused
with insufficient_quota, and no reservation is left behind."""

import asyncio

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import budgets, money, pricing
from billing.models import Account, Reservation, UsageEvent
from serving import services
from serving.models import Backend
from tenancy import services as tenancy
from tenancy.audit import Actor
from tenancy.models import APIKey
from tests.conftest import DEMO_MODEL, start_web
from tests.serving.stub_upstream import Upstream

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
REQUESTS = 200
BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}


async def fire(url: str, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
                for _ in range(REQUESTS)
            )
        )


def test_concurrent_requests_never_overspend_the_credit(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("the race is run against PostgreSQL")
    upstream = Upstream("provider", words=5, delay=0.01)
    backend = services.register_backend(name="race", url=upstream.url, base_model=DEMO_MODEL, engine="openai")
    Backend.objects.filter(pk=backend.pk).update(healthy=True)
    tenant = make_tenant("race")
    key = tenant.key()
    tenancy.set_organization_limits(tenant.org.pk, rpm=10_000, tpm=10_000_000, actor=Actor())
    key_id = APIKey.all_orgs.get(organization=tenant.org).pk
    tenancy.set_key_limits(key_id, organization_id=tenant.org.pk, rpm=10_000, tpm=10_000_000, actor=Actor())
    price = pricing.current(tenant.org.pk, DEMO_MODEL)
    one = price.cost(prompt_tokens=9, completion_tokens=5)  # what the stub reports for each answer
    budgets.ensure_account(tenant.org.pk)
    credit = 50 * one
    Account.all_orgs.filter(organization=tenant.org).update(credit=credit)
    web = start_web({"METERING_DRAIN_SECONDS": "0.2"})
    try:
        responses = asyncio.run(fire(web.url, key))
    finally:
        web.process.terminate()  # drains what is spooled before it exits
        web.process.wait(60)
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    for response in refused:
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "insufficient_quota"
        assert response.json()["error"]["type"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
    assert served and refused
    rows = UsageEvent.all_orgs.filter(organization=tenant.org)
    assert rows.count() == len(served)
    charged = rows.aggregate(total=Sum("cost"))["total"]
    account = Account.all_orgs.get(organization=tenant.org)
    assert charged <= credit
    assert account.credit == credit - charged >= 0
    assert account.reserved == 0 and not Reservation.all_orgs.filter(organization=tenant.org).exists()
    assert money.to_decimal(charged) > 0
