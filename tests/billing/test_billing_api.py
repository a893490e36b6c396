"""The management API's billing reads: the account (exact decimal strings) and notifications,
for owners and admins and billing:read keys only."""

import pytest

from billing import services
from billing.models import Notification
from tenancy.audit import Actor
from tests.conftest import key_client, session_client

pytestmark = pytest.mark.django_db


def test_the_account_shows_credit_reservations_and_this_months_spend(tenant_a):
    services.configure_account(tenant_a.org.pk, monthly_limit="12.5", actor=Actor())
    services.reserve(request_id="held", organization_id=tenant_a.org.pk, api_key_id=None, amount=250_000_000)
    body = session_client(tenant_a.owner).get("/api/orgs/alpha/billing/account/").json()
    assert body == {
        "mode": "prepaid",
        "currency": "usd",
        "credit": "5",
        "reserved": "0.25",
        "available": "4.75",
        "monthly_limit": "12.5",
        "period": body["period"],
        "spent_this_month": "0",
    }


def test_notifications_and_who_may_read_billing(tenant_a):
    Notification.all_orgs.create(organization=tenant_a.org, kind="spend_limit", title="50 %", body="half")
    member = tenant_a.add_member("m@alpha.test")
    assert session_client(member).get("/api/orgs/alpha/billing/account/").status_code == 403
    assert key_client(tenant_a.key(scopes=["inference"])).get("/api/orgs/alpha/billing/account/").status_code == 403
    reader = key_client(tenant_a.key(scopes=["billing:read"]))
    assert reader.get("/api/orgs/alpha/billing/account/").status_code == 200
    listed = reader.get("/api/orgs/alpha/billing/notifications/").json()
    assert [n["title"] for n in listed["data"]] == ["50 %"]
