"""Paying: a saved card, credit top-ups, collecting invoices, and what the provider reports back.
An invoice's own state (paid, open again, pushed to the provider) is billing.invoicing's to change.

Every outcome goes through one handler per kind (succeeded, failed, refunded, invoice paid, invoice
failed), whether it comes from the provider's answer or from its webhook, and each handler moves a
row forward under its row lock: a success credits once, however often and in whatever order it is
reported. A failed invoice payment starts a grace period (BILLING_PAYMENT_GRACE_DAYS); when it
ends unpaid the organization is suspended, and a later successful payment reactivates it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing import alerts, budgets, invoicing, money
from billing.models import Account, Invoice, InvoiceLine, Payment, PaymentCustomer, WebhookEvent
from billing.payments import get_provider
from billing.payments.types import InvoiceItem, PaymentError, ProviderEvent
from tenancy import audit, selectors
from tenancy import services as tenancy_services
from tenancy.audit import Actor
from tenancy.models import Organization
from tenancy.services import ServiceError

log = logging.getLogger("billing.paying")
SUSPENSION_REASON = "Payment overdue"


class PayingError(ServiceError):
    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None, status: int = 400):
        super().__init__(message, code, param)
        self.status = status


def _customer(organization_id: int, provider) -> PaymentCustomer:
    found = PaymentCustomer.all_orgs.filter(organization_id=organization_id, provider=provider.name).first()
    if found is not None:
        return found
    organization = Organization.objects.get(pk=organization_id)
    emails = selectors.administrator_emails(organization_id)
    customer_id = provider.ensure_customer(
        organization_id=organization_id, name=organization.name, email=emails[0] if emails else ""
    )
    try:
        with transaction.atomic():
            return PaymentCustomer.all_orgs.create(
                organization_id=organization_id, provider=provider.name, customer_id=customer_id
            )
    except IntegrityError:  # made concurrently; the provider's idempotency key made one customer too
        return PaymentCustomer.all_orgs.get(organization_id=organization_id, provider=provider.name)


def save_card(organization_id: int, payment_method: str, *, actor: Actor) -> PaymentCustomer:
    """Attach a card (a payment method the browser tokenised with the provider) as the default."""
    provider = get_provider()
    customer = _customer(organization_id, provider)
    try:
        card = provider.save_card(customer_id=customer.customer_id, payment_method=payment_method)
    except PaymentError as error:
        raise PayingError(str(error), "card_error", "payment_method", status=402) from None
    PaymentCustomer.all_orgs.filter(pk=customer.pk).update(
        payment_method_id=card.payment_method_id, card_brand=card.brand, card_last4=card.last4
    )
    audit.record(
        "billing.card_saved",
        actor=actor,
        organization_id=organization_id,
        target=customer,
        data={"brand": card.brand, "last4": card.last4},
    )
    customer.refresh_from_db()
    return customer


def top_up(organization_id: int, amount: str, *, actor: Actor, idempotency_key: str = "") -> Payment:
    """Charge the saved card and add the amount to the prepaid credit once the charge succeeds.
    Repeated with the same idempotency key (a double submit, a retry after a timeout), it answers
    the payment made the first time and charges nothing more."""
    try:
        nanos = money.from_decimal(amount)
        minor = money.to_minor_units(nanos, money.minor_exponent())
    except money.MoneyError as error:
        raise PayingError(str(error), param="amount") from None
    if money.from_minor_units(minor, money.minor_exponent()) != nanos:
        raise PayingError(
            f"{amount} is not a whole amount of {money.currency().upper()}'s smallest unit.", param="amount"
        )
    low, high = (money.from_decimal(settings.BILLING_TOP_UP_MIN), money.from_decimal(settings.BILLING_TOP_UP_MAX))
    if not low <= nanos <= high:
        raise PayingError(
            f"A top-up is between {settings.BILLING_TOP_UP_MIN} and {settings.BILLING_TOP_UP_MAX} "
            f"{money.currency().upper()}.",
            param="amount",
        )
    return _charge_saved_card(
        organization_id,
        kind=Payment.Kind.TOP_UP,
        amount=nanos,
        audit_action="billing.top_up_requested",
        actor=actor,
        idempotency_key=idempotency_key,
    )


def _check_key(idempotency_key: str) -> str:
    key = (idempotency_key or "").strip()
    if len(key) > 200 or any(ord(c) < 32 for c in key):
        raise PayingError("An idempotency key is at most 200 printable characters.", param="idempotency_key")
    return key


def _earlier(organization_id: int, key: str, kind: str, amount: int, invoice: Invoice | None) -> Payment | None:
    """The payment made before with this idempotency key, if any (the same request repeated)."""
    if not key:
        return None
    found = Payment.all_orgs.filter(organization_id=organization_id, idempotency_key=key).first()
    asked = (kind, amount, getattr(invoice, "pk", None))
    if found is not None and (found.kind, found.amount, found.invoice_id) != asked:
        raise PayingError(
            "This idempotency key was used for another payment; use a new key for a new payment.",
            "idempotency_key_reused",
            "idempotency_key",
            status=409,
        )
    return found


def _new_payment(organization_id: int, *, kind: str, provider: str, amount: int, invoice, key: str) -> Payment | None:
    """A new pending payment, or None if one with this idempotency key was made concurrently."""
    try:
        with transaction.atomic():
            return Payment.all_orgs.create(
                organization_id=organization_id,
                kind=kind,
                provider=provider,
                invoice=invoice,
                amount=amount,
                amount_minor=money.to_minor_units(amount, money.minor_exponent()),
                currency=money.currency(),
                idempotency_key=key,
            )
    except IntegrityError:
        if not key:
            raise
        return None


def _charge_saved_card(
    organization_id: int,
    *,
    kind: str,
    amount: int,
    audit_action: str,
    actor: Actor,
    invoice: Invoice | None = None,
    idempotency_key: str = "",
) -> Payment:
    """A new payment charged to the saved card now (or the one made before with this idempotency
    key); its outcome goes through the same handlers as the provider's webhooks (so a success
    counts once, whichever reports it first)."""
    key = _check_key(idempotency_key)
    earlier = _earlier(organization_id, key, kind, amount, invoice)
    if earlier is not None:
        return earlier
    provider = get_provider()
    customer = _customer(organization_id, provider)
    if not customer.payment_method_id:
        raise PayingError("Save a card first.", "no_payment_method", "payment_method", status=402)
    payment = _new_payment(organization_id, kind=kind, provider=provider.name, amount=amount, invoice=invoice, key=key)
    if payment is None:
        return _earlier(organization_id, key, kind, amount, invoice)
    audit.record(
        audit_action,
        actor=actor,
        organization_id=organization_id,
        target=payment,
        data={"amount": money.exact(amount)},
    )
    metadata = {"organization_id": str(organization_id), "payment_id": str(payment.pk)}
    if invoice is not None:
        metadata["invoice_id"] = str(invoice.pk)
    charge = provider.charge(
        customer_id=customer.customer_id,
        payment_method_id=customer.payment_method_id,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        idempotency_key=f"maas-payment-{payment.pk}",
        metadata=metadata,
    )
    _report(provider.name, payment, charge.status, charge.provider_payment_id, charge.failure_message)
    payment.refresh_from_db()
    return payment


def _report(provider: str, payment: Payment, status: str, provider_payment_id: str, message: str) -> None:
    """What the provider answered at once, through the webhook handlers (pending: the webhook will)."""
    reference = {"payment_id": str(payment.pk)}
    if status == "succeeded":
        payment_succeeded(provider, provider_payment_id, reference)
    elif status == "failed":
        payment_failed(provider, provider_payment_id, reference, message)
    elif provider_payment_id:
        Payment.all_orgs.filter(pk=payment.pk, provider_payment_id="").update(provider_payment_id=provider_payment_id)


def _locked_payment(provider: str, provider_payment_id: str, metadata: dict) -> Payment | None:
    rows = Payment.all_orgs.select_for_update()
    ours = str(metadata.get("payment_id") or "")
    if ours.isdigit():
        found = rows.filter(pk=int(ours), provider=provider).first()
        if found is not None:
            if provider_payment_id and not found.provider_payment_id:
                found.provider_payment_id = provider_payment_id
            return found
    if provider_payment_id:
        return rows.filter(provider=provider, provider_payment_id=provider_payment_id).first()
    return None


@transaction.atomic
def payment_succeeded(provider: str, provider_payment_id: str, metadata: dict) -> bool:
    """Returns whether this call did it (False: already done, or not a payment of ours)."""
    payment = _locked_payment(provider, provider_payment_id, metadata)
    if payment is None or payment.status == Payment.Status.SUCCEEDED:
        return False
    payment.status, payment.failure_message = Payment.Status.SUCCEEDED, ""
    payment.save(update_fields=["status", "failure_message", "provider_payment_id", "updated_at"])
    if payment.kind == Payment.Kind.TOP_UP:
        budgets.ensure_account(payment.organization_id)
        Account.all_orgs.filter(organization_id=payment.organization_id).update(credit=F("credit") + payment.amount)
        action = "billing.top_up_succeeded"
    else:
        invoicing.paid(payment.invoice_id)
        action = "billing.invoice_paid"
    audit.record(
        action,
        actor=Actor.system(),
        organization_id=payment.organization_id,
        target=payment,
        data={"amount": str(money.to_decimal(payment.amount)), "provider_payment_id": payment.provider_payment_id},
    )
    _paid_up(payment.organization_id)
    return True


@transaction.atomic
def payment_failed(provider: str, provider_payment_id: str, metadata: dict, message: str) -> bool:
    payment = _locked_payment(provider, provider_payment_id, metadata)
    if payment is None or payment.status != Payment.Status.PENDING:
        return False  # a success is never undone by a late failure report
    payment.status, payment.failure_message = Payment.Status.FAILED, message[:300]
    payment.save(update_fields=["status", "failure_message", "provider_payment_id", "updated_at"])
    amount = money.display(payment.amount, 2)
    if payment.kind == Payment.Kind.TOP_UP:
        alerts.notify(
            payment.organization_id,
            kind="payment_failed",
            level="warning",
            title=f"A credit top-up of {amount} failed",
            body=f"The card was not charged: {message} Your credit is unchanged.",
            data={"payment_id": payment.pk, "message": message},
            action="billing.top_up_failed",
        )
    else:
        _start_grace(payment.organization_id, f"the payment of {amount} for invoice {payment.invoice.number}", message)
    return True


def _start_grace(organization_id: int, what: str, message: str) -> None:
    now = timezone.now()
    budgets.ensure_account(organization_id)
    Account.all_orgs.filter(organization_id=organization_id, payment_failed_at=None).update(payment_failed_at=now)
    since = Account.all_orgs.get(organization_id=organization_id).payment_failed_at
    deadline = since + timedelta(days=settings.BILLING_PAYMENT_GRACE_DAYS)
    alerts.notify(
        organization_id,
        kind="payment_failed",
        level="critical",
        title="A payment failed",
        body=(
            f"{what.capitalize()} failed: {message} Update the card on file. Unless the balance is paid by "
            f"{deadline:%Y-%m-%d %H:%M} UTC, the organization will be suspended."
        ),
        data={"message": message, "suspend_after": deadline.isoformat()},
        action="billing.payment_failed",
    )


def _paid_up(organization_id: int) -> None:
    """A successful payment that leaves no invoice unpaid ends a grace period, and lifts a
    suspension for non-payment."""
    if Invoice.all_orgs.filter(organization_id=organization_id, status=Invoice.Status.OPEN, amount_due__gt=0).exists():
        return
    Account.all_orgs.filter(organization_id=organization_id).update(payment_failed_at=None)
    organization = Organization.objects.get(pk=organization_id)
    if not organization.is_active and organization.suspended_reason.startswith(SUSPENSION_REASON):
        tenancy_services.reactivate_organization(organization_id, actor=Actor.system())


def _taken_back(payment: Payment, nanos: int) -> None:
    """Money of a succeeded payment went back to the card (a refund, a lost dispute): a top-up's
    credit goes with it; an invoice it paid is open again for that much."""
    if payment.kind == Payment.Kind.TOP_UP:
        Account.all_orgs.filter(organization_id=payment.organization_id).update(credit=F("credit") - nanos)
        return
    invoicing.taken_back(payment.invoice_id, nanos)


def _given_back(payment: Payment, nanos: int) -> None:
    """Disputed money came back to us (a dispute won)."""
    if payment.kind == Payment.Kind.TOP_UP:
        Account.all_orgs.filter(organization_id=payment.organization_id).update(credit=F("credit") + nanos)
        return
    invoicing.given_back(payment.invoice_id, nanos)
    _paid_up(payment.organization_id)


@transaction.atomic
def disputed(provider: str, provider_payment_id: str, disputed_minor: int, *, won: bool = False) -> bool:
    """A chargeback: the disputed amount is taken back (a top-up's credit, or an invoice reopened)
    when the dispute is opened, and given back if we win it."""
    payment = _locked_payment(provider, provider_payment_id, {})
    if payment is None or payment.status != Payment.Status.SUCCEEDED:
        return False
    exponent = money.minor_exponent()
    if won:
        if not payment.disputed_minor:
            return False
        nanos = money.from_minor_units(payment.disputed_minor, exponent)
        payment.disputed_minor = 0
        payment.save(update_fields=["disputed_minor", "updated_at"])
        _given_back(payment, nanos)
        title, body = f"Dispute of {money.display(nanos, 2)} won", "The disputed amount is yours again."
    else:
        delta = min(disputed_minor, payment.amount_minor) - payment.disputed_minor
        if delta <= 0:
            return False
        payment.disputed_minor += delta
        payment.save(update_fields=["disputed_minor", "updated_at"])
        nanos = money.from_minor_units(delta, exponent)
        _taken_back(payment, nanos)
        title = f"A payment of {money.display(payment.amount, 2)} is disputed"
        top_up = payment.kind == Payment.Kind.TOP_UP
        then = "it is taken off your prepaid credit." if top_up else "the invoice is open again."
        body = f"The card holder disputed {money.display(nanos, 2)}; {then}"
    alerts.notify(
        payment.organization_id,
        kind="dispute",
        level="info" if won else "critical",
        title=title,
        body=body,
        data={"payment_id": payment.pk, "amount": str(money.to_decimal(nanos))},
        action="billing.dispute_won" if won else "billing.disputed",
    )
    return True


@transaction.atomic
def refunded(provider: str, provider_payment_id: str, refunded_minor: int) -> bool:
    """The provider's cumulative refunded amount; a top-up's refund takes its credit back, an
    invoice payment's reopens the invoice for that much."""
    payment = _locked_payment(provider, provider_payment_id, {})
    if payment is None or refunded_minor <= payment.refunded_minor:
        return False
    delta = refunded_minor - payment.refunded_minor
    payment.refunded_minor = refunded_minor
    payment.save(update_fields=["refunded_minor", "updated_at"])
    nanos = money.from_minor_units(delta, money.minor_exponent())
    if payment.status == Payment.Status.SUCCEEDED:
        _taken_back(payment, nanos)
    alerts.notify(
        payment.organization_id,
        kind="refund",
        level="info",
        title=f"Refund of {money.display(nanos, 2)}",
        body=(
            f"{money.display(nanos, 2)} was refunded to your card"
            + (
                " and taken off your prepaid credit."
                if payment.kind == Payment.Kind.TOP_UP
                else "; the invoice is open again for it."
            )
        ),
        data={"payment_id": payment.pk, "refunded": str(money.to_decimal(nanos))},
        action="billing.refunded",
    )
    return True


def _invoice_by_provider(event: ProviderEvent) -> Invoice | None:
    ours = str(event.metadata.get("invoice_id") or "")
    rows = Invoice.all_orgs.select_for_update()
    if ours.isdigit():
        return rows.filter(pk=int(ours)).first()
    return rows.filter(provider_invoice_id=event.provider_invoice_id).first() if event.provider_invoice_id else None


def _invoice_payment(invoice: Invoice, provider: str) -> dict:
    payment = Payment.all_orgs.filter(invoice=invoice, provider=provider).order_by("-id").first()
    return {"payment_id": str(payment.pk)} if payment is not None else {}


def collect_invoice(invoice_id: int) -> Invoice:
    """Push an open invoice with an amount due to the provider, once; it charges the saved card."""
    provider = get_provider()
    invoice = Invoice.all_orgs.get(pk=invoice_id)
    if invoice.status != Invoice.Status.OPEN or not invoice.amount_due or invoice.provider_invoice_id:
        return invoice
    customer = _customer(invoice.organization_id, provider)
    payment = Payment.all_orgs.filter(invoice=invoice, provider=provider.name).first() or Payment.all_orgs.create(
        organization_id=invoice.organization_id,
        kind=Payment.Kind.INVOICE,
        provider=provider.name,
        invoice=invoice,
        amount=invoice.amount_due,
        amount_minor=money.to_minor_units(invoice.amount_due, money.minor_exponent()),
        currency=invoice.currency,
    )
    pushed = provider.push_invoice(
        customer_id=customer.customer_id,
        payment_method_id=customer.payment_method_id,
        currency=invoice.currency,
        items=invoice_items(invoice),
        idempotency_key=f"maas-invoice-{invoice.pk}",
        metadata={"organization_id": str(invoice.organization_id), "invoice_id": str(invoice.pk)},
    )
    invoicing.pushed(invoice.pk, provider.name, pushed.provider_invoice_id)
    status = {"paid": "succeeded", "failed": "failed"}.get(pushed.status, "pending")
    _report(provider.name, payment, status, pushed.provider_payment_id, pushed.failure_message)
    invoice.refresh_from_db()
    return invoice


def retry_invoice_payment(invoice_id: int, *, organization_id: int, actor: Actor, idempotency_key: str = "") -> Payment:
    """Pay an open invoice now, with the saved card. Under the invoice's row lock (a second click
    waits, then finds it paid): an invoice the provider holds and nobody paid yet is paid there —
    the provider's own collection and this one are then one payment, never two; otherwise (it was
    never pushed, or was paid and then refunded or disputed) a charge for what is outstanding."""
    key = _check_key(idempotency_key)
    with transaction.atomic():
        invoice = Invoice.all_orgs.select_for_update().filter(pk=invoice_id, organization_id=organization_id).first()
        if invoice is None:
            raise PayingError(f"No invoice {invoice_id}.", "not_found", status=404)
        earlier = Payment.all_orgs.filter(organization_id=organization_id, idempotency_key=key).first() if key else None
        if earlier is not None:
            return _earlier(organization_id, key, earlier.kind, earlier.amount, invoice)
        if invoice.status != Invoice.Status.OPEN or not invoice.outstanding:
            raise PayingError(f"Invoice {invoice.number} has nothing to pay.", "nothing_due", status=409)
        if invoice.provider_invoice_id and not invoice.amount_paid:
            return _pay_provider_invoice(invoice, actor, key)
        return _charge_saved_card(
            organization_id,
            kind=Payment.Kind.INVOICE,
            amount=invoice.outstanding,
            audit_action="billing.invoice_payment_requested",
            actor=actor,
            invoice=invoice,
            idempotency_key=key,
        )


def _pay_provider_invoice(invoice: Invoice, actor: Actor, key: str) -> Payment:
    provider = get_provider()
    customer = _customer(invoice.organization_id, provider)
    if not customer.payment_method_id:
        raise PayingError("Save a card first.", "no_payment_method", "payment_method", status=402)
    payment = _new_payment(
        invoice.organization_id,
        kind=Payment.Kind.INVOICE,
        provider=provider.name,
        amount=invoice.outstanding,
        invoice=invoice,
        key=key,
    )
    audit.record(
        "billing.invoice_payment_requested",
        actor=actor,
        organization_id=invoice.organization_id,
        target=payment,
        data={"amount": money.exact(payment.amount), "provider_invoice_id": invoice.provider_invoice_id},
    )
    paid = provider.pay_invoice(
        provider_invoice_id=invoice.provider_invoice_id,
        payment_method_id=customer.payment_method_id,
        idempotency_key=f"maas-invoice-{invoice.pk}-pay-{payment.pk}",
    )
    status = {"paid": "succeeded", "failed": "failed"}.get(paid.status, "pending")
    _report(provider.name, payment, status, paid.provider_payment_id, paid.failure_message)
    payment.refresh_from_db()
    return payment


def invoice_items(invoice: Invoice) -> list[InvoiceItem]:
    """The invoice in the provider's minor units: each line rounded, credit applied as a negative
    item, and a rounding item if the rounded lines miss the rounded amount due."""
    exponent = money.minor_exponent()
    items = [
        InvoiceItem(
            f"{line.model}, {line.meter} tokens: {line.quantity:,} at {money.per_million(line.unit_price)} per million",
            money.to_minor_units(line.amount, exponent),
        )
        for line in InvoiceLine.all_orgs.filter(invoice=invoice)
    ]
    if invoice.credits_applied:
        items.append(InvoiceItem("Credit applied", -money.to_minor_units(invoice.credits_applied, exponent)))
    difference = money.to_minor_units(invoice.amount_due, exponent) - sum(item.amount_minor for item in items)
    if difference:
        items.append(InvoiceItem("Rounding", difference))
    return items


def enforce_grace(now: datetime | None = None) -> int:
    """Suspend the organizations whose failed payment has stayed unpaid past the grace period."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.BILLING_PAYMENT_GRACE_DAYS)
    overdue = Account.all_orgs.filter(
        payment_failed_at__lte=cutoff, organization__status=Organization.Status.ACTIVE
    ).values_list("organization_id", "payment_failed_at")
    suspended = 0
    for organization_id, since in list(overdue):
        with transaction.atomic():
            tenancy_services.suspend_organization(
                organization_id,
                reason=f"{SUSPENSION_REASON} since {since:%Y-%m-%d}; pay the open invoice to reactivate",
                actor=Actor.system(),
            )
            alerts.notify(
                organization_id,
                kind="suspended",
                level="critical",
                title="Your organization is suspended for non-payment",
                body="A payment failed and the balance stayed unpaid past the grace period. API calls and "
                "fine-tuning are refused until the open invoice is paid; update the card on file.",
                data={"payment_failed_at": since.isoformat()},
                action="billing.suspended_for_non_payment",
            )
        suspended += 1
    return suspended


def receive_webhook(provider_name: str, body: bytes, signature: str | None) -> tuple[int, str]:
    """A provider's webhook: verified on the raw body, stored once, handled once. Returns the HTTP
    status and a short message (a handler error answers 500, so the provider delivers again)."""
    provider = get_provider()
    if provider.name != provider_name:
        return 404, "No such webhook."
    event = provider.parse_event(body, signature)  # InvalidSignature -> the view answers 400
    organization_id = event.metadata.get("organization_id")
    organization_id = int(organization_id) if str(organization_id or "").isdigit() else None
    with transaction.atomic():
        try:
            with transaction.atomic():
                row, _ = WebhookEvent.objects.get_or_create(
                    provider=provider.name,
                    event_id=event.event_id,
                    defaults={"type": event.type, "payload": event.payload, "status": WebhookEvent.Status.FAILED},
                )
        except IntegrityError:  # the same event delivered twice at once
            row = WebhookEvent.objects.get(provider=provider.name, event_id=event.event_id)
        row = WebhookEvent.objects.select_for_update().get(pk=row.pk)
        if row.status != WebhookEvent.Status.FAILED:  # processed or ignored before: a replay
            return 200, "Already processed."
        try:
            with transaction.atomic():
                acted = _handle(provider.name, event)
        except Exception as error:  # recorded on the event; the provider retries
            log.exception("webhook %s %s failed", event.type, event.event_id)
            row.error = f"{type(error).__name__}: {error}"[:2000]
            row.save(update_fields=["error"])
            return 500, "Handling failed; it will be retried."
        row.status = WebhookEvent.Status.PROCESSED if acted is not None else WebhookEvent.Status.IGNORED
        row.error = ""
        row.processed_at = timezone.now()
        row.organization_id = organization_id if Organization.objects.filter(pk=organization_id or 0).exists() else None
        row.save(update_fields=["status", "error", "processed_at", "organization"])
    return 200, "OK"


def _handle(provider: str, event: ProviderEvent) -> bool | None:
    """None: not an event we act on."""
    match event.kind:
        case "payment_succeeded":
            return payment_succeeded(provider, event.provider_payment_id, event.metadata)
        case "payment_failed":
            return payment_failed(provider, event.provider_payment_id, event.metadata, event.failure_message)
        case "refunded":
            return refunded(provider, event.provider_payment_id, event.refunded_minor)
        case "disputed" | "dispute_won":
            won = event.kind == "dispute_won"
            return disputed(provider, event.provider_payment_id, event.disputed_minor, won=won)
        case "invoice_paid" | "invoice_payment_failed":
            invoice = _invoice_by_provider(event)
            if invoice is None:
                return None
            reference = _invoice_payment(invoice, provider)
            if event.kind == "invoice_paid":
                return payment_succeeded(provider, "", reference)
            return payment_failed(provider, "", reference, event.failure_message)
    return None
