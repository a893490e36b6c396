"""Stripe through its official SDK against localstripe, with its webhooks delivered to a real web
process: a top-up is credited once (from the webhook, also when the event is replayed), a forged
signature changes nothing, a declined card and a refund are handled once, and the monthly close
pushes an invoice whose total is what we billed (standalone invoices through the loopback proxy,
see stripe_fakes)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from stripe import StripeClient

from billing import budgets, invoicing, money, paying, rollups, services
from billing.models import Account, Invoice, Notification, Payment, Price, WebhookEvent
from billing.payments import get_provider
from tenancy.audit import Actor
from tests.billing import stripe_fakes
from tests.billing.usage import usage_record
from tests.conftest import session_client, start_web

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
VISA, DECLINED_AFTER_ATTACH = "4242424242424242", "4000000000000341"


@pytest.fixture(scope="module")
def stripe_world(django_db_setup, django_db_blocker):
    localstripe, localstripe_url = stripe_fakes.start_localstripe()
    proxy = stripe_fakes.InvoicesProxy(localstripe_url)
    env = {
        "PAYMENT_PROVIDER": "stripe",
        "STRIPE_API_BASE": proxy.url,
        "STRIPE_SECRET_KEY": stripe_fakes.SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": stripe_fakes.WEBHOOK_SECRET,
    }
    web = start_web(env)
    stripe_fakes.register_webhook(localstripe_url, f"{web.url}/billing/webhooks/stripe/")
    yield {"env": env, "web": web, "proxy": proxy}
    web.process.terminate()
    web.process.wait(10)
    proxy.close()
    localstripe.terminate()
    localstripe.wait(10)


@pytest.fixture
def world(stripe_world, settings):
    for name, value in stripe_world["env"].items():
        setattr(settings, name, value)
    return stripe_world


def card(world, number: str) -> str:
    """What Stripe.js does in the browser: a card number becomes a payment method id."""
    client = StripeClient(stripe_fakes.SECRET_KEY, base_addresses={"api": world["proxy"].url})
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}}
    )
    return method.id


def wait_for_event(event_type: str, object_id: str, timeout: float = 20) -> WebhookEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in WebhookEvent.objects.filter(type=event_type, processed_at__isnull=False):
            if row.payload["data"]["object"]["id"] == object_id:
                return row
        time.sleep(0.2)
    raise AssertionError(f"no processed {event_type} webhook for {object_id}")


def post_webhook(world, payload: bytes, signature: str) -> httpx.Response:
    return httpx.post(
        f"{world['web'].url}/billing/webhooks/stripe/",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        timeout=30,
    )


def credit(tenant) -> int:
    return Account.all_orgs.get(organization=tenant.org).credit


def test_a_top_up_is_credited_once_by_its_webhook_and_forgeries_change_nothing(world, make_tenant):
    tenant = make_tenant("payer")
    budgets.ensure_account(tenant.org.pk)
    saved = paying.save_card(tenant.org.pk, card(world, VISA), actor=Actor(user=tenant.owner))
    assert (saved.card_brand, saved.card_last4) == ("visa", "4242") and saved.customer_id.startswith("cus_")
    start = credit(tenant)

    # The web process charged the card and died before hearing back: only the webhook can credit it.
    payment = Payment.all_orgs.create(
        organization=tenant.org, kind="top_up", provider="stripe", amount=money.from_decimal("12.34"),
        amount_minor=1234, currency=money.currency(),
    )  # fmt: skip
    charge = get_provider().charge(
        customer_id=saved.customer_id,
        payment_method_id=saved.payment_method_id,
        amount_minor=1234,
        currency=money.currency(),
        idempotency_key=f"maas-payment-{payment.pk}",
        metadata={"organization_id": str(tenant.org.pk), "payment_id": str(payment.pk)},
    )
    assert charge.status == "succeeded"
    delivered = wait_for_event("payment_intent.succeeded", charge.provider_payment_id)
    assert delivered.status == "processed" and delivered.organization_id == tenant.org.pk
    assert credit(tenant) == start + money.from_decimal("12.34")
    payment.refresh_from_db()
    assert (payment.status, payment.provider_payment_id) == ("succeeded", charge.provider_payment_id)

    # Replayed (Stripe delivers at least once): stored once, credited once.
    payload = json.dumps(delivered.payload).encode()
    replay = post_webhook(world, payload, stripe_fakes.sign(payload))
    assert replay.status_code == 200 and replay.json()["message"] == "Already processed."
    # Forged: a wrong secret, a body changed after signing, a stale timestamp, no signature.
    forged = json.dumps({**delivered.payload, "id": "evt_forged"}).encode()
    tampered = payload.replace(b"1234", b"9999")
    for body, signature in [
        (forged, stripe_fakes.sign(forged, secret="whsec_someone_else")),
        (tampered, stripe_fakes.sign(payload)),
        (forged, stripe_fakes.sign(forged, at=int(time.time()) - 3600)),
        (forged, ""),
    ]:
        response = post_webhook(world, body, signature)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature"
    assert WebhookEvent.objects.filter(event_id="evt_forged").count() == 0
    assert WebhookEvent.objects.filter(event_id=delivered.event_id).count() == 1
    assert credit(tenant) == start + money.from_decimal("12.34")

    # The console's way: the answer credits at once, and the webhook that follows adds nothing.
    owner = session_client(tenant.owner)
    response = owner.post(f"/api/orgs/{tenant.org.slug}/billing/top-ups/", {"amount": "20"}, format="json")
    assert response.status_code == 201 and response.json()["status"] == "succeeded"
    second = Payment.all_orgs.get(pk=response.json()["id"])
    wait_for_event("payment_intent.succeeded", second.provider_payment_id)
    assert credit(tenant) == start + money.from_decimal("32.34")


def test_a_declined_card_and_a_refund(world, make_tenant):
    tenant = make_tenant("decliner")
    budgets.ensure_account(tenant.org.pk)
    start = credit(tenant)
    paying.save_card(tenant.org.pk, card(world, DECLINED_AFTER_ATTACH), actor=Actor(user=tenant.owner))
    declined = paying.top_up(tenant.org.pk, "15", actor=Actor(user=tenant.owner))
    assert declined.status == "failed" and "declined" in declined.failure_message
    assert credit(tenant) == start
    assert Notification.all_orgs.filter(organization=tenant.org, kind="payment_failed").count() == 1

    paying.save_card(tenant.org.pk, card(world, VISA), actor=Actor(user=tenant.owner))
    paid = paying.top_up(tenant.org.pk, "15", actor=Actor(user=tenant.owner))
    assert paid.status == "succeeded" and credit(tenant) == start + money.from_decimal("15")

    # A partial refund made in Stripe's dashboard: Stripe reports the charge with its refunded total.
    stripe = StripeClient(stripe_fakes.SECRET_KEY, base_addresses={"api": world["proxy"].url})
    intent = stripe.v1.payment_intents.retrieve(paid.provider_payment_id)
    charge_id = intent.latest_charge if isinstance(intent.latest_charge, str) else intent.latest_charge.id
    stripe.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    charge = stripe.v1.charges.retrieve(charge_id)
    assert charge.amount_refunded == 500
    # localstripe sends no charge.refunded event: the test sends the one Stripe would, signed.
    payload = stripe_fakes.event("charge.refunded", charge.to_dict())
    for _ in range(2):  # and once more, replayed
        assert post_webhook(world, payload, stripe_fakes.sign(payload)).status_code == 200
    assert credit(tenant) == start + money.from_decimal("10")
    stripe.v1.refunds.create(params={"payment_intent": intent.id, "amount": 300})
    later = stripe_fakes.event("charge.refunded", stripe.v1.charges.retrieve(charge_id).to_dict())
    assert post_webhook(world, later, stripe_fakes.sign(later)).status_code == 200
    assert credit(tenant) == start + money.from_decimal("7")


def test_the_monthly_close_pushes_one_invoice_to_stripe_with_our_total(world, make_tenant):
    tenant = make_tenant("invoiced")
    budgets.ensure_account(tenant.org.pk)
    services.configure_account(tenant.org.pk, mode="invoiced", actor=Actor(user=tenant.owner))
    paying.save_card(tenant.org.pk, card(world, VISA), actor=Actor(user=tenant.owner))
    Account.all_orgs.filter(organization=tenant.org).update(credit=money.from_decimal("0.01"))
    price = Price.objects.create(model="m-inv", input_per_token=1234, output_per_token=5678, training_per_token=0)
    Price.objects.filter(pk=price.pk).update(effective_from=datetime(2020, 1, 1, tzinfo=UTC))
    this_month = rollups.month_of(datetime.now(UTC))
    last_month_day = datetime.combine(this_month, datetime.min.time(), UTC) - timedelta(days=3)
    for n in range(25):
        services.record_usage(
            **usage_record(
                tenant.org.pk,
                f"inv-{n}",
                model="m-inv",
                prompt_tokens=1000 + n * 37,
                completion_tokens=500 + n * 11,
                price=[price.pk, 1234, 5678, 0],
                created_at=last_month_day + timedelta(minutes=n),
            )
        )
    invoice = invoicing.close_due()[0]  # collected when the close commits (tasks run inline here)
    invoice.refresh_from_db()
    assert invoice.provider == "stripe" and invoice.provider_invoice_id.startswith("in_")
    assert invoice.status == "open" and invoice.credits_applied == money.from_decimal("0.01")
    pushed = world["proxy"].invoices[invoice.provider_invoice_id]
    assert pushed["status"] == "open" and pushed["metadata"]["invoice_id"] == str(invoice.pk)
    assert pushed["total"] == money.to_minor_units(invoice.amount_due)
    # The same items (localstripe lists items made within one second in no fixed order).
    assert sorted(line["amount"] for line in pushed["lines"]["data"]) == sorted(
        item.amount_minor for item in paying.invoice_items(invoice)
    )

    # Re-running the close or the collection pushes nothing more.
    assert invoicing.close_due() == []
    paying.collect_invoice(invoice.pk)
    ours = [i for i in world["proxy"].invoices.values() if i["metadata"].get("invoice_id") == str(invoice.pk)]
    assert ours == [pushed]

    # Stripe collects the card and reports it.
    paid = stripe_fakes.event("invoice.paid", {**pushed, "status": "paid"})
    for _ in range(2):
        assert post_webhook(world, paid, stripe_fakes.sign(paid)).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.paid_at is not None
    assert Payment.all_orgs.get(invoice=invoice).status == "succeeded"
    assert Invoice.all_orgs.filter(organization=tenant.org).count() == 1


def test_paying_an_invoice_stripe_is_collecting_pays_that_invoice_not_a_second_charge(world, make_tenant):
    """The owner's "pay now" while Stripe still collects the invoice it was given: the invoice is
    paid at Stripe (one payment of it), no PaymentIntent of our own is created, and Stripe's later
    `invoice.paid` changes nothing more."""
    tenant = make_tenant("pay-now")
    budgets.ensure_account(tenant.org.pk)
    services.configure_account(tenant.org.pk, mode="invoiced", actor=Actor(user=tenant.owner))
    paying.save_card(tenant.org.pk, card(world, VISA), actor=Actor(user=tenant.owner))
    Account.all_orgs.filter(organization=tenant.org).update(credit=0)
    price = Price.objects.create(model="m-pay", input_per_token=50_000, output_per_token=0, training_per_token=0)
    Price.objects.filter(pk=price.pk).update(effective_from=datetime(2020, 1, 1, tzinfo=UTC))
    this_month = rollups.month_of(datetime.now(UTC))
    services.record_usage(
        **usage_record(
            tenant.org.pk,
            "pay-now-1",
            model="m-pay",
            prompt_tokens=1000,
            completion_tokens=0,
            price=[price.pk, 50_000, 0, 0],
            created_at=datetime.combine(this_month, datetime.min.time(), UTC) - timedelta(days=2),
        )
    )
    invoice = invoicing.close_due()[0]
    invoice.refresh_from_db()
    assert invoice.status == "open" and invoice.provider_invoice_id
    owner = session_client(tenant.owner)
    url = f"/api/orgs/{tenant.org.slug}/billing/invoices/{invoice.pk}/pay/"
    paid = owner.post(url)
    assert paid.status_code == 201 and paid.json()["status"] == "succeeded", paid.content
    assert owner.post(url).status_code == 409  # the double click
    pushed = world["proxy"].invoices[invoice.provider_invoice_id]
    assert pushed["status"] == "paid" and pushed["payments"] == 1
    intents = StripeClient(stripe_fakes.SECRET_KEY, base_addresses={"api": world["proxy"].url}).v1.payment_intents
    metadata = [i.to_dict().get("metadata") or {} for i in intents.list().data]
    ours = [m for m in metadata if m.get("organization_id") == str(tenant.org.pk)]
    assert ours == []  # nothing charged beside the invoice
    event = stripe_fakes.event("invoice.paid", {**pushed, "status": "paid"})
    assert post_webhook(world, event, stripe_fakes.sign(event)).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.amount_paid == invoice.amount_due
    assert Payment.all_orgs.filter(invoice=invoice, status="succeeded").count() == 1


def test_a_chargeback_takes_a_top_ups_credit_back(world, make_tenant):
    tenant = make_tenant("chargeback")
    paying.save_card(tenant.org.pk, card(world, VISA), actor=Actor(user=tenant.owner))
    payment = paying.top_up(tenant.org.pk, "20", actor=Actor(user=tenant.owner))
    deadline = time.monotonic() + 20
    while Payment.all_orgs.get(pk=payment.pk).status != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.2)
    payment.refresh_from_db()
    before = credit(tenant)
    dispute = {"id": "dp_1", "object": "dispute", "amount": 2000, "payment_intent": payment.provider_payment_id}
    opened = stripe_fakes.event("charge.dispute.created", {**dispute, "status": "needs_response"})
    assert post_webhook(world, opened, stripe_fakes.sign(opened)).status_code == 200
    assert credit(tenant) == before - money.from_decimal("20")
    won = stripe_fakes.event("charge.dispute.closed", {**dispute, "status": "won"})
    assert post_webhook(world, won, stripe_fakes.sign(won)).status_code == 200
    assert credit(tenant) == before
