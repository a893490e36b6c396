"""Bulk holds (billing.holds): a process admits requests from money held in bulk, in memory, and
the rules stay those of reserving each request alone — refused only when the budgets cannot cover
it beyond what is held, charged exactly once, given back when idle, reaped when its process is gone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import budgets, services
from billing.holds import Holds
from billing.models import Account, KeySpendLimit, Reservation, UsageEvent
from tests.billing.usage import usage_record

WORST = 100


def account(tenant) -> Account:
    return Account.all_orgs.get(organization=tenant.org)


def prepaid(tenant, credit: int) -> None:
    budgets.ensure_account(tenant.org.pk)
    Account.all_orgs.filter(organization=tenant.org).update(credit=credit)


def charge(tenant, request_id: str, hold_id: str, cost: int) -> None:
    """The ledger row of a request admitted from `hold_id`: `cost` prompt tokens at 1 nano-unit each."""
    record = usage_record(tenant.org.pk, request_id, prompt_tokens=cost, completion_tokens=0, price=[None, 1, 1, 1])
    services.record_usage(**record, hold=hold_id)


@pytest.fixture(autouse=True)
def fresh_policies():
    budgets.forget()
    yield
    budgets.forget()


def test_draws_are_refused_exactly_when_the_credit_cannot_cover_them(tenant_a):
    prepaid(tenant_a, 10 * WORST + 50)
    holds = Holds()
    drawn = [holds.draw(tenant_a.org.pk, None, WORST) for _ in range(10)]
    assert len(set(drawn)) == 1  # one hold, topped up as needed
    with pytest.raises(budgets.InsufficientQuota) as refused:
        holds.draw(tenant_a.org.pk, None, WORST)
    assert refused.value.budget == "organization_credit"
    # Never more held than there is credit, and every draw is covered by the database's hold.
    assert account(tenant_a).reserved <= account(tenant_a).credit
    assert Reservation.all_orgs.get(request_id=drawn[0]).amount >= 10 * WORST
    # One request ends having used 30 of its 100: 70 come back, enough for nothing yet (50 + 70 < 2 x 100)...
    holds.finish(drawn[0], WORST, 30)
    holds.draw(tenant_a.org.pk, None, WORST)
    with pytest.raises(budgets.InsufficientQuota):
        holds.draw(tenant_a.org.pk, None, WORST)


def test_ledger_rows_charge_the_hold_and_idle_holds_are_given_back(tenant_a, settings):
    settings.BILLING_HOLD_IDLE_SECONDS = 0
    prepaid(tenant_a, 100_000)
    holds = Holds()
    hold_id = holds.draw(tenant_a.org.pk, None, WORST)
    assert account(tenant_a).reserved > WORST  # the top-up took more than one request's worth
    holds.finish(hold_id, WORST, 40)
    charge(tenant_a, "req-1", hold_id, 40)
    charge(tenant_a, "req-1", hold_id, 40)  # a replayed record changes nothing
    row = Reservation.all_orgs.get(request_id=hold_id)
    assert row.spent == 40
    assert account(tenant_a).credit == 100_000 - 40
    holds.maintain()  # idle: its unused part goes back, and with nothing left to settle the row goes
    assert account(tenant_a).reserved == 0
    assert not Reservation.all_orgs.filter(request_id=hold_id).exists()
    assert UsageEvent.all_orgs.get(request_id="req-1").cost == 40


def test_a_hold_given_back_before_its_rows_land_keeps_covering_them(tenant_a, settings):
    settings.BILLING_HOLD_IDLE_SECONDS = 0
    prepaid(tenant_a, 100_000)
    holds = Holds()
    hold_id = holds.draw(tenant_a.org.pk, None, WORST)
    holds.finish(hold_id, WORST, 60)
    holds.maintain()
    row = Reservation.all_orgs.get(request_id=hold_id)
    assert (row.amount, row.spent, row.closed) == (60, 0, True)
    assert account(tenant_a).reserved == 60
    charge(tenant_a, "late", hold_id, 60)
    assert account(tenant_a).reserved == 0 and account(tenant_a).credit == 100_000 - 60
    assert not Reservation.all_orgs.filter(request_id=hold_id).exists()


def test_two_processes_share_a_credit_without_overspending(tenant_a, settings):
    """Each top-up leaves most of the rest to the other process; what one process holds unused
    when the other is refused comes back once it idles, and then exactly the credit's worth of
    requests has been admitted, never one more."""
    settings.BILLING_HOLD_IDLE_SECONDS = 0
    prepaid(tenant_a, 20 * WORST)
    first, second = Holds(), Holds()
    admitted, refused = 0, None
    for turn in range(40):
        holds = first if turn % 2 else second
        try:
            holds.draw(tenant_a.org.pk, None, WORST)
            admitted += 1
        except budgets.InsufficientQuota:
            refused = holds
            break
    assert refused is not None and 16 <= admitted <= 20
    assert account(tenant_a).reserved <= account(tenant_a).credit
    (second if refused is first else first).maintain()  # the other one idles: its unused part comes back
    while True:
        try:
            refused.draw(tenant_a.org.pk, None, WORST)
            admitted += 1
        except budgets.InsufficientQuota:
            break
    assert admitted == 20
    assert account(tenant_a).reserved == 20 * WORST


def test_a_top_up_leaves_most_of_the_rest_to_others(tenant_a):
    prepaid(tenant_a, 1_000_000)
    Holds().draw(tenant_a.org.pk, None, WORST)
    # It wanted 64 requests' worth and got it: far less than a quarter of the credit.
    assert account(tenant_a).reserved == 64 * WORST
    prepaid(tenant_a, 64 * WORST + 4 * WORST)
    Account.all_orgs.filter(organization=tenant_a.org).update(reserved=0)
    Holds().draw(tenant_a.org.pk, None, WORST)
    assert account(tenant_a).reserved == WORST + (3 * WORST + 64 * WORST) // 4


def test_a_key_limit_is_held_too(tenant_a):
    from tenancy.audit import Actor
    from tenancy.models import APIKey

    prepaid(tenant_a, 1_000_000)
    tenant_a.key()
    key_id = str(APIKey.all_orgs.get(organization=tenant_a.org).pk)
    services.set_key_spend_limit(tenant_a.org.pk, key_id, "0.0000005", actor=Actor())  # 500 nano-units
    holds = Holds()
    for _ in range(5):
        holds.draw(tenant_a.org.pk, key_id, WORST)
    with pytest.raises(budgets.InsufficientQuota) as refused:
        holds.draw(tenant_a.org.pk, key_id, WORST)
    assert refused.value.budget == "api_key_monthly_limit"
    assert KeySpendLimit.all_orgs.get(api_key_id=key_id).reserved == 500
    holds.draw(tenant_a.org.pk, None, WORST)  # the organization's own hold is another


def test_a_process_that_stopped_renewing_is_reaped_and_its_next_draw_starts_a_new_hold(tenant_a):
    prepaid(tenant_a, 10 * WORST)
    holds = Holds()
    first = holds.draw(tenant_a.org.pk, None, WORST)
    holds.finish(first, WORST, 0)
    Reservation.all_orgs.filter(request_id=first).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert budgets.release_expired() == 1
    assert account(tenant_a).reserved == 0
    # This process's memory still has the hold; the database no longer does: maintain notices,
    # and a draw goes to a new hold rather than to money nobody holds.
    for hold in list(holds._open.values()):
        hold.renewed_at -= 10**6
    holds.maintain()
    second = holds.draw(tenant_a.org.pk, None, WORST)
    assert second != first
    assert account(tenant_a).reserved == Reservation.all_orgs.get(request_id=second).amount > 0
