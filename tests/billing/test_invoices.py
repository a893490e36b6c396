"""The monthly close and paying invoices with the fake provider (the embedded default): one invoice
per organization and month with the ledger's exact total, re-running changes nothing, late usage
goes on the next invoice, and an unpaid invoice leads through a grace period to suspension."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail

from billing import budgets, invoicing, money, paying, rollups, services
from billing.models import Account, Invoice, InvoiceLine, Notification, Payment, Price, UsageEvent
from tenancy.audit import Actor
from tenancy.models import Organization
from tests.billing.usage import usage_record
from tests.conftest import session_client

NOW = datetime.now(UTC)
THIS_MONTH = rollups.month_of(NOW)
LAST_MONTH = rollups.month_of(datetime.combine(THIS_MONTH, datetime.min.time(), UTC) - timedelta(days=1))


def _at(month, day: int, hour: int = 12) -> datetime:
    return datetime(month.year, month.month, day, hour, tzinfo=UTC)


def _price(model: str, amounts: tuple[int, int, int], since: datetime) -> list:
    row = Price.objects.create(
        model=model,
        input_per_token=amounts[0],
        output_per_token=amounts[1],
        training_per_token=amounts[2],
        effective_from=since,
    )
    return [row.pk, *amounts, 0, row.cached_amount]  # as a record carries it: cached input at half the input


@pytest.fixture
def last_month_usage(tenant_a):
    """Usage last month on two models, with a price change mid-month, and a training job."""
    budgets.ensure_account(tenant_a.org.pk)
    old = _price("m-chat", (100, 300, 0), _at(LAST_MONTH, 1) - timedelta(days=40))
    new = _price("m-chat", (120, 360, 0), _at(LAST_MONTH, 15, 0))
    trainer = _price("m-base", (50, 50, 700), _at(LAST_MONTH, 1) - timedelta(days=40))
    for n in range(30):
        services.record_usage(
            **usage_record(
                tenant_a.org.pk,
                f"chat-{n}",
                model="m-chat",
                prompt_tokens=100 + n,
                cached_tokens=64 if n % 5 == 0 else 0,  # a prefix the model server had cached
                completion_tokens=40 + n,
                price=old if n < 15 else new,
                created_at=_at(LAST_MONTH, 1 + n % 27, n % 24),
            )
        )
    services.record_usage(
        **usage_record(
            tenant_a.org.pk,
            "train:ftjob-1",
            route="fine_tuning.jobs",
            model="m-base",
            prompt_tokens=0,
            completion_tokens=0,
            training_tokens=12345,
            price=trainer,
            created_at=_at(LAST_MONTH, 20),
        )
    )
    for n in range(4):  # Batch API requests: the same version, at its batch meter (half, by default)
        services.record_usage(
            **usage_record(
                tenant_a.org.pk,
                f"batch-{n}",
                route="batch.chat.completions",
                model="m-chat",
                prompt_tokens=1000,
                cached_tokens=200 if n == 0 else 0,
                completion_tokens=201,
                price=[new[0], 60, 180, 0, 0, 60],
                created_at=_at(LAST_MONTH, 21, n),
            )
        )
    return tenant_a


def _ledger_lines(organization, month) -> dict:
    prices = {p.pk: p for p in Price.objects.all()}
    lines: dict = defaultdict(lambda: [0, 0])
    for row in UsageEvent.all_orgs.filter(organization=organization):
        if rollups.month_of(row.created_at) != month:
            continue
        price = prices[row.price_id]
        batch = "batch " if row.route.startswith("batch.") else ""
        per_input, per_output = price.batch_amounts if batch else (price.input_per_token, price.output_per_token)
        per_cached = min(per_input, price.cached_amount) if batch else price.cached_amount
        for meter, tokens, unit in [
            (f"{batch}input", row.prompt_tokens - row.cached_tokens, per_input),
            (f"{batch}cached input", row.cached_tokens, per_cached),
            (f"{batch}output", row.completion_tokens, per_output),
            ("training", row.training_tokens, price.training_per_token),
        ]:
            if tokens:
                lines[(row.model, meter, unit)][0] += tokens
                lines[(row.model, meter, unit)][1] += tokens * unit
    return {k: tuple(v) for k, v in lines.items()}


def test_the_close_makes_one_invoice_with_the_ledgers_lines_and_total(last_month_usage):
    tenant = last_month_usage
    credit_before = Account.all_orgs.get(organization=tenant.org).credit
    made = invoicing.close_due()
    assert len(made) == 1
    invoice = made[0]
    assert (invoice.period, invoice.mode, invoice.status) == (LAST_MONTH, "prepaid", "paid")
    lines = {
        (line.model, line.meter, line.unit_price): (line.quantity, line.amount)
        for line in InvoiceLine.all_orgs.filter(invoice=invoice)
    }
    assert lines == _ledger_lines(tenant.org, LAST_MONTH)
    # chat input, cached input and output at two prices, batch input, cached input and output, and training
    assert len(lines) == 10
    assert lines[("m-chat", "batch input", 60)] == (3800, 228_000)  # half the version's 120
    assert lines[("m-chat", "batch cached input", 60)] == (200, 12_000)  # the lower of batch and cached: 60
    assert lines[("m-chat", "batch output", 180)] == (804, 144_720)
    assert lines[("m-chat", "cached input", 50)] == (64 * 3, 64 * 3 * 50)  # rows 0, 5 and 10 at the old price
    ledger_total = sum(UsageEvent.all_orgs.filter(organization=tenant.org).values_list("cost", flat=True))
    assert invoice.subtotal == ledger_total == invoice.credits_applied and invoice.amount_due == 0
    # Prepaid: the credit paid as requests settled; the statement takes nothing more.
    assert Account.all_orgs.get(organization=tenant.org).credit == credit_before

    assert invoicing.close_due() == []
    assert invoicing.close_month(tenant.org.pk, LAST_MONTH) == invoice
    assert Invoice.all_orgs.count() == 1 and InvoiceLine.all_orgs.filter(invoice=invoice).count() == 10


def test_usage_that_arrives_after_the_close_goes_on_the_next_invoice(last_month_usage):
    tenant = last_month_usage
    first = invoicing.close_due()[0]
    late_price = Price.objects.filter(model="m-chat").order_by("-effective_from").first()
    services.record_usage(
        **usage_record(
            tenant.org.pk,
            "late-1",
            model="m-chat",
            prompt_tokens=1000,
            completion_tokens=0,
            price=[late_price.pk, late_price.input_per_token, late_price.output_per_token, 0],
            created_at=_at(LAST_MONTH, 28, 23),
        )
    )
    assert invoicing.close_due() == []  # this month has not ended
    next_month_end = datetime.combine(rollups.next_month(THIS_MONTH), datetime.min.time(), UTC) + timedelta(hours=3)
    second = invoicing.close_due(now=next_month_end)[0]
    assert second.period == THIS_MONTH and second.subtotal == 1000 * late_price.input_per_token
    first.refresh_from_db()
    total = sum(UsageEvent.all_orgs.values_list("cost", flat=True))
    assert first.subtotal + second.subtotal == total


def test_the_current_month_cannot_be_closed(tenant_a):
    with pytest.raises(invoicing.CloseError):
        invoicing.close_month(tenant_a.org.pk, THIS_MONTH)


def _invoiced(tenant, credit: str) -> None:
    services.configure_account(tenant.org.pk, mode="invoiced", actor=Actor(user=tenant.owner))
    Account.all_orgs.filter(organization=tenant.org).update(credit=money.from_decimal(credit))


def test_an_invoiced_account_has_credit_applied_and_the_rest_charged_to_its_card(
    last_month_usage, django_capture_on_commit_callbacks
):
    tenant = last_month_usage
    _invoiced(tenant, "0.0001")
    paying.save_card(tenant.org.pk, "pm_card_visa", actor=Actor(user=tenant.owner))
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoicing.close_due()[0]
    invoice.refresh_from_db()  # collected when the close committed
    assert invoice.credits_applied == money.from_decimal("0.0001")
    assert invoice.amount_due == invoice.subtotal - invoice.credits_applied > 0
    assert invoice.status == "paid" and invoice.provider == "fake" and invoice.provider_invoice_id
    assert Account.all_orgs.get(organization=tenant.org).credit == 0
    payment = Payment.all_orgs.get(invoice=invoice)
    assert (payment.status, payment.amount) == ("succeeded", invoice.amount_due)
    items = paying.invoice_items(invoice)
    assert sum(item.amount_minor for item in items) == money.to_minor_units(invoice.amount_due)


def test_a_declined_invoice_payment_leads_to_suspension_after_the_grace_period(
    last_month_usage, tenant_b, django_capture_on_commit_callbacks
):
    tenant = last_month_usage
    _invoiced(tenant, "0")
    paying.save_card(tenant.org.pk, "pm_card_chargeDeclined", actor=Actor(user=tenant.owner))
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoicing.close_due()[0]
    invoice.refresh_from_db()
    assert invoice.status == "open" and Payment.all_orgs.get(invoice=invoice).status == "failed"
    account = Account.all_orgs.get(organization=tenant.org)
    assert account.payment_failed_at is not None
    notice = Notification.all_orgs.get(organization=tenant.org, kind="payment_failed")
    assert "suspended" in notice.body and notice.level == "critical"
    assert [m.to for m in mail.outbox] == [[tenant.owner.email]]

    assert paying.enforce_grace() == 0  # within the grace period
    assert paying.enforce_grace(now=NOW + timedelta(days=8)) == 1
    org = Organization.objects.get(pk=tenant.org.pk)
    assert not org.is_active and org.suspended_reason.startswith(paying.SUSPENSION_REASON)
    assert paying.enforce_grace(now=NOW + timedelta(days=9)) == 0  # once
    assert Organization.objects.get(pk=tenant_b.org.pk).is_active

    # A new card and "pay now": paid, the grace period ends and the organization is active again.
    paying.save_card(tenant.org.pk, "pm_card_visa", actor=Actor(user=tenant.owner))
    owner = session_client(tenant.owner)
    assert owner.get(f"/api/orgs/{tenant.org.slug}/members/").status_code == 403  # suspended
    response = owner.post(f"/api/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/pay/")
    assert response.status_code == 201 and response.json()["status"] == "succeeded"  # but it may pay
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert Organization.objects.get(pk=tenant.org.pk).is_active
    assert Account.all_orgs.get(organization=tenant.org).payment_failed_at is None


def test_top_ups_with_the_fake_provider(tenant_a):
    owner = session_client(tenant_a.owner)
    base = f"/api/orgs/{tenant_a.org.slug}/billing"
    response = owner.post(f"{base}/top-ups/", {"amount": "20.00"}, format="json")
    assert response.status_code == 402 and response.json()["error"]["code"] == "no_payment_method"
    assert owner.put(f"{base}/payment-method/", {"payment_method": "pm_card_bogus"}, format="json").status_code == 402
    response = owner.put(f"{base}/payment-method/", {"payment_method": "pm_card_visa"}, format="json")
    assert response.status_code == 200 and response.json()["card_last4"] == "4242"
    before = budgets.ensure_account(tenant_a.org.pk).credit
    response = owner.post(f"{base}/top-ups/", {"amount": "20.00"}, format="json")
    assert response.status_code == 201 and response.json()["status"] == "succeeded"
    assert Account.all_orgs.get(organization=tenant_a.org).credit == before + money.from_decimal("20")
    for bad in ("20.001", "0.5", "abc", "100000"):
        response = owner.post(f"{base}/top-ups/", {"amount": bad}, format="json")
        assert response.status_code == 400 and response.json()["error"]["param"] == "amount", bad
    assert Account.all_orgs.get(organization=tenant_a.org).credit == before + money.from_decimal("20")
    listed = owner.get(f"{base}/payments/").json()
    assert [p["status"] for p in listed["data"]] == ["succeeded"]


def test_invoices_through_the_api_and_not_to_others(last_month_usage, tenant_b):
    tenant = last_month_usage
    invoice = invoicing.close_due()[0]
    owner = session_client(tenant.owner)
    listed = owner.get(f"/api/orgs/{tenant.org.slug}/billing/invoices/").json()
    assert [i["number"] for i in listed["data"]] == [invoice.number]
    one = owner.get(f"/api/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/").json()
    assert one["subtotal"] == str(money.to_decimal(invoice.subtotal).normalize()) and len(one["lines"]) == 10
    outsider = session_client(tenant_b.owner)
    assert outsider.get(f"/api/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/").status_code == 404
    assert outsider.get(f"/api/orgs/{tenant_b.org.slug}/billing/invoices/{invoice.pk}/").status_code == 404
    assert outsider.get(f"/api/orgs/{tenant_b.org.slug}/billing/invoices/").json()["data"] == []


def test_the_printable_invoice_page(last_month_usage, tenant_b):
    tenant = last_month_usage
    invoice = invoicing.close_due()[0]
    owner = session_client(tenant.owner)
    page = owner.get(f"/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert invoice.number in html and "m-chat" in html and "training" in html
    assert money.display(invoice.subtotal, 6) in html
    listing = owner.get(f"/orgs/{tenant.org.slug}/billing/").content.decode()
    assert invoice.number in listing
    outsider = session_client(tenant_b.owner)
    assert outsider.get(f"/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/").status_code == 404
    assert outsider.get(f"/orgs/{tenant_b.org.slug}/billing/invoices/{invoice.pk}/").status_code == 404


def test_the_close_invoices_command(last_month_usage):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    tenant = last_month_usage
    out = StringIO()
    call_command("close_invoices", "--org", tenant.org.slug, "--month", f"{LAST_MONTH:%Y-%m}", stdout=out)
    invoice = Invoice.all_orgs.get()
    assert invoice.number in out.getvalue()
    call_command("close_invoices", stdout=(again := StringIO()))
    assert "Nothing to invoice." in again.getvalue() and Invoice.all_orgs.count() == 1
    with pytest.raises(CommandError, match="cannot be closed before it has ended"):
        call_command("close_invoices", "--org", tenant.org.slug, "--month", f"{THIS_MONTH:%Y-%m}")
    with pytest.raises(CommandError, match="go together"):
        call_command("close_invoices", "--org", tenant.org.slug)


def test_a_top_up_repeated_with_its_idempotency_key_charges_once(tenant_a):
    owner = session_client(tenant_a.owner)
    base = f"/api/orgs/{tenant_a.org.slug}/billing"
    owner.put(f"{base}/payment-method/", {"payment_method": "pm_card_visa"}, format="json")
    before = budgets.ensure_account(tenant_a.org.pk).credit
    first = owner.post(f"{base}/top-ups/", {"amount": "20.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    again = owner.post(f"{base}/top-ups/", {"amount": "20.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert Account.all_orgs.get(organization=tenant_a.org).credit == before + money.from_decimal("20")
    other = owner.post(f"{base}/top-ups/", {"amount": "30.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert Payment.all_orgs.filter(organization=tenant_a.org).count() == 1
    # The console's form carries a key of its own: submitted twice, it charges once.
    page = owner.get(f"/orgs/{tenant_a.org.slug}/billing/").content.decode()
    key = page.split('name="idempotency_key" value="')[1].split('"')[0]
    for _ in range(2):
        owner.post(f"/orgs/{tenant_a.org.slug}/billing/", {"action": "top_up", "amount": "5", "idempotency_key": key})
    assert Account.all_orgs.get(organization=tenant_a.org).credit == before + money.from_decimal("25")


def test_paying_an_invoice_twice_pays_it_once(last_month_usage, django_capture_on_commit_callbacks):
    """The provider's own collection failed; the owner pays, then pays again (a double click, a
    retry): one payment, and the second answer says there is nothing left to pay."""
    tenant = last_month_usage
    _invoiced(tenant, "0")
    paying.save_card(tenant.org.pk, "pm_card_chargeDeclined", actor=Actor(user=tenant.owner))
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoicing.close_due()[0]
    paying.save_card(tenant.org.pk, "pm_card_visa", actor=Actor(user=tenant.owner))
    owner = session_client(tenant.owner)
    url = f"/api/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/pay/"
    paid = owner.post(url)
    assert paid.status_code == 201 and paid.json()["status"] == "succeeded"
    twice = owner.post(url)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "nothing_due"
    assert Payment.all_orgs.filter(invoice=invoice, status="succeeded").count() == 1
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_paid) == ("paid", invoice.amount_due)


def test_a_refunded_invoice_payment_reopens_the_invoice_and_a_disputed_top_up_takes_its_credit_back(
    last_month_usage, tenant_b, django_capture_on_commit_callbacks
):
    tenant = last_month_usage
    _invoiced(tenant, "0")
    paying.save_card(tenant.org.pk, "pm_card_visa", actor=Actor(user=tenant.owner))
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoicing.close_due()[0]
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    payment = Payment.all_orgs.get(invoice=invoice)
    assert payment.amount_minor > 0
    assert paying.refunded("fake", payment.provider_payment_id, payment.amount_minor) is True
    invoice.refresh_from_db()
    refunded = money.from_minor_units(payment.amount_minor, money.minor_exponent())
    assert invoice.status == "open" and invoice.outstanding == min(refunded, invoice.amount_due)
    # Paying it again charges what is outstanding, not the whole invoice.
    again = paying.retry_invoice_payment(invoice.pk, organization_id=tenant.org.pk, actor=Actor(user=tenant.owner))
    assert again.status == "succeeded" and again.amount == invoice.outstanding
    invoice.refresh_from_db()
    assert invoice.status == "paid"

    # A top-up disputed by the card holder: its credit goes, and comes back if the dispute is won.
    paying.save_card(tenant_b.org.pk, "pm_card_visa", actor=Actor(user=tenant_b.owner))
    top_up = paying.top_up(tenant_b.org.pk, "20", actor=Actor(user=tenant_b.owner))
    credit = Account.all_orgs.get(organization=tenant_b.org).credit
    assert paying.disputed("fake", top_up.provider_payment_id, top_up.amount_minor) is True
    assert paying.disputed("fake", top_up.provider_payment_id, top_up.amount_minor) is False  # reported twice
    assert Account.all_orgs.get(organization=tenant_b.org).credit == credit - money.from_decimal("20")
    assert Notification.all_orgs.filter(organization=tenant_b.org, kind="dispute", level="critical").exists()
    assert paying.disputed("fake", top_up.provider_payment_id, 0, won=True) is True
    assert Account.all_orgs.get(organization=tenant_b.org).credit == credit
