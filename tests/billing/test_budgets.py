"""Budgets: reservations held with conditional updates, settled with the ledger row once,
released when nothing was used, reaped when their request is gone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import budgets, money, services
from billing.models import Account, KeySpendLimit, Reservation
from tenancy.audit import Actor
from tenancy.models import APIKey, AuditLog
from tests.billing.usage import usage_record
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
USD = money.from_decimal


@pytest.fixture(autouse=True)
def fresh_policies():
    budgets.forget()
    yield
    budgets.forget()


def reserve(tenant, request_id: str, amount: int, key_id: str | None = None) -> budgets.Hold:
    return services.reserve(request_id=request_id, organization_id=tenant.org.pk, api_key_id=key_id, amount=amount)


def charge(tenant, request_id: str, cost_tokens: int, key_id: str | None = None) -> None:
    """The ledger row of a request: cost_tokens prompt tokens at 1 nano-unit each (price version
    omitted: the cost is what the record says)."""
    services.record_usage(
        **usage_record(
            tenant.org.pk,
            request_id,
            api_key_id=key_id,
            prompt_tokens=cost_tokens,
            completion_tokens=0,
            price=[None, 1, 1, 1],
        )
    )


def account(tenant) -> Account:
    return Account.all_orgs.get(organization=tenant.org)


def test_a_new_organization_starts_prepaid_with_the_sign_up_credit(tenant_a, settings):
    assert budgets.policy(tenant_a.org.pk).prepaid
    assert account(tenant_a).credit == USD(settings.BILLING_SIGNUP_CREDIT)


def test_credit_covers_worst_cases_and_each_settles_once(tenant_a):
    services.grant_credits(tenant_a.org.pk, "-4.9999999", reason="test", actor=Actor())  # 100 nano-units left
    assert account(tenant_a).credit == 100
    reserve(tenant_a, "r1", 60)
    with pytest.raises(budgets.InsufficientQuota) as refused:
        reserve(tenant_a, "r2", 60)  # 60 + 60 > 100: refused although nothing is spent yet
    assert refused.value.budget == "organization_credit"
    assert not Reservation.all_orgs.filter(request_id="r2").exists()
    charge(tenant_a, "r1", 25)  # used 25 of the 60 it held
    charge(tenant_a, "r1", 25)  # a replayed record changes nothing
    assert (account(tenant_a).credit, account(tenant_a).reserved) == (75, 0)
    reserve(tenant_a, "r2", 60)  # fits now
    assert services.release(budgets.Hold("r2", tenant_a.org.pk, None, 60)) is None
    assert (account(tenant_a).credit, account(tenant_a).reserved) == (75, 0)
    assert Reservation.all_orgs.count() == 0


def test_invoiced_without_limits_holds_nothing_and_a_monthly_limit_holds(tenant_a):
    services.configure_account(tenant_a.org.pk, mode="invoiced", actor=Actor())
    budgets.forget()
    assert reserve(tenant_a, "free", 10**12).amount == 0  # no budget applies: nothing reserved
    services.configure_account(tenant_a.org.pk, monthly_limit="0.000001", actor=Actor())  # 1000 nano-units
    budgets.forget()
    reserve(tenant_a, "a", 900)
    charge(tenant_a, "a", 800)
    assert account(tenant_a).period_spent == 800
    with pytest.raises(budgets.InsufficientQuota) as refused:
        reserve(tenant_a, "b", 300)
    assert refused.value.budget == "organization_monthly_limit"
    assert account(tenant_a).credit == USD("5")  # invoiced: credit is not drawn per request
    assert AuditLog.all_orgs.filter(action="billing.account_changed").count() == 2


def test_a_new_month_starts_from_zero(tenant_a):
    services.configure_account(tenant_a.org.pk, monthly_limit="0.000001", actor=Actor())
    budgets.forget()
    last_month = (timezone.now().replace(day=1) - timedelta(days=1)).replace(day=1)
    Account.all_orgs.filter(organization=tenant_a.org).update(period=last_month, period_spent=1000)
    reserve(tenant_a, "new-month", 900)  # last month's spend does not count
    assert account(tenant_a).period == timezone.now().date().replace(day=1) and account(tenant_a).period_spent == 0


def test_a_key_limit_is_its_own_budget(tenant_a, tenant_b):
    tenant_a.key()
    key_id = str(APIKey.all_orgs.get(organization=tenant_a.org).pk)
    with pytest.raises(services.BillingError):  # another organization's key
        services.set_key_spend_limit(tenant_b.org.pk, key_id, "1", actor=Actor())
    services.set_key_spend_limit(tenant_a.org.pk, key_id, "0.000000500", actor=Actor())
    budgets.forget()
    hold = reserve(tenant_a, "k1", 400, key_id)
    assert hold.key_limited
    with pytest.raises(budgets.InsufficientQuota) as refused:
        reserve(tenant_a, "k2", 200, key_id)
    assert refused.value.budget == "api_key_monthly_limit"
    assert account(tenant_a).reserved == 400  # the refused one left nothing on the organization
    reserve(tenant_a, "no-key", 200)  # the organization itself still has credit
    charge(tenant_a, "k1", 100, key_id)
    limit = KeySpendLimit.all_orgs.get(api_key_id=key_id)
    assert (limit.reserved, limit.period_spent) == (0, 100)


def test_the_reaper_releases_what_a_vanished_request_held(tenant_a):
    reserve(tenant_a, "gone", 1000)
    Reservation.all_orgs.filter(request_id="gone").update(expires_at=timezone.now() - timedelta(seconds=1))
    reserve(tenant_a, "alive", 1000)
    assert budgets.release_expired() == 1
    assert account(tenant_a).reserved == 1000
    charge(tenant_a, "gone", 10)  # its record turns up after all: charged, nothing released twice
    assert account(tenant_a).reserved == 1000


def test_operators_grant_credits_with_an_audit_row(tenant_a):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("grant_credits", "alpha", "12.5", "--reason", "goodwill", stdout=out)
    assert account(tenant_a).credit == USD("17.5")
    assert "17.500000 USD" in out.getvalue()
    row = AuditLog.all_orgs.get(action="billing.credits_granted")
    assert row.data["amount"] == "12.5" and row.data["reason"] == "goodwill"
    with pytest.raises(CommandError):
        call_command("grant_credits", "alpha", "1.0000000001")  # finer than a nano-unit
    with pytest.raises(CommandError):
        call_command("grant_credits", "no-such-org", "1")


def test_spend_alerts_at_50_80_and_100_percent_once_per_period(
    tenant_a, mailoutbox, django_capture_on_commit_callbacks
):
    from billing.models import Notification

    services.configure_account(tenant_a.org.pk, mode="invoiced", monthly_limit="0.000001", actor=Actor())  # 1000
    budgets.forget()
    with django_capture_on_commit_callbacks(execute=True):
        for n, tokens in enumerate([400, 100, 50, 300, 100, 200]):  # 400 500 550 850 950 1150
            charge(tenant_a, f"spend-{n}", tokens)
    assert [n.data["percent"] for n in Notification.all_orgs.order_by("id")] == [50, 80, 100]
    assert Notification.all_orgs.filter(level="critical").count() == 1
    assert [m.subject for m in mailoutbox] == [
        f"Your organization has used {p} % of its monthly spend limit" for p in (50, 80, 100)
    ]
    assert mailoutbox[0].to == ["owner@alpha.test"]
    assert AuditLog.all_orgs.filter(action="billing.spend_alert").count() == 3
    # A new month: the spend and the alerts start again.
    last_month = (timezone.now().replace(day=1) - timedelta(days=1)).replace(day=1)
    Account.all_orgs.filter(organization=tenant_a.org).update(period=last_month)
    with django_capture_on_commit_callbacks(execute=True):
        charge(tenant_a, "next-month", 600)
    assert Notification.all_orgs.count() == 4 and account(tenant_a).period_spent == 600


def test_the_sign_up_credit_is_granted_once_per_person(tenant_a, settings):
    """One account, several organizations: the first has the sign-up credit, the others start at 0
    (ten organizations were ten times the credit)."""
    from tenancy import services as tenancy

    first = budgets.ensure_account(tenant_a.org.pk)
    assert first.credit == money.from_decimal(settings.BILLING_SIGNUP_CREDIT) > 0
    more = [
        tenancy.create_organization(slug=f"more-{n}", name=f"More {n}", owner=tenant_a.owner, actor=Actor())
        for n in range(3)
    ]
    assert [budgets.ensure_account(org.pk).credit for org in more] == [0, 0, 0]
    # Someone else's first organization has theirs.
    _, org = tenancy.sign_up(email="second@person.test", password=PASSWORD, actor=Actor())
    assert budgets.ensure_account(org.pk).credit == money.from_decimal(settings.BILLING_SIGNUP_CREDIT)
