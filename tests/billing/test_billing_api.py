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


def test_owners_set_spend_limits_on_the_organization_and_its_keys(tenant_a, tenant_b):
    from billing import budgets
    from billing.models import Account, KeySpendLimit
    from tenancy.models import APIKey, AuditLog

    owner = session_client(tenant_a.owner)
    base = f"/api/orgs/{tenant_a.org.slug}/billing"
    response = owner.patch(f"{base}/account/", {"monthly_limit": "250.50"}, format="json")
    assert response.status_code == 200 and response.json()["monthly_limit"] == "250.5"
    assert Account.all_orgs.get(organization=tenant_a.org).monthly_limit == 250_500_000_000
    assert owner.patch(f"{base}/account/", {"mode": "invoiced"}, format="json").status_code == 400
    assert owner.patch(f"{base}/account/", {"monthly_limit": "-1"}, format="json").status_code == 400
    assert owner.patch(f"{base}/account/", {"monthly_limit": None}, format="json").json()["monthly_limit"] is None

    tenant_a.key()
    key_id = str(APIKey.all_orgs.filter(organization=tenant_a.org).first().pk)
    response = owner.put(f"{base}/key-limits/{key_id}/", {"monthly_limit": "10"}, format="json")
    assert response.status_code == 200 and response.json()["monthly_limit"] == "10"
    assert owner.get(f"{base}/key-limits/").json()["data"][0]["api_key_id"] == key_id
    budgets.forget()  # what the change's commit does in the web process
    assert key_id in budgets.policy(tenant_a.org.pk).limited_keys
    assert owner.delete(f"{base}/key-limits/{key_id}/").status_code == 204
    assert not KeySpendLimit.all_orgs.exists()
    assert AuditLog.all_orgs.filter(action="billing.key_limit_set").count() == 2

    admin = session_client(tenant_a.add_member("admin@alpha.test", role="admin"))
    assert admin.patch(f"{base}/account/", {"monthly_limit": "1"}, format="json").status_code == 403
    assert admin.put(f"{base}/key-limits/{key_id}/", {"monthly_limit": "1"}, format="json").status_code == 403
    outsider = session_client(tenant_b.owner)
    assert (
        outsider.put(
            f"/api/orgs/{tenant_b.org.slug}/billing/key-limits/{key_id}/", {"monthly_limit": "1"}, format="json"
        ).status_code
        == 404
    )
    assert outsider.patch(f"{base}/account/", {"monthly_limit": "1"}, format="json").status_code == 404
