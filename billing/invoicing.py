"""Invoices: the monthly close makes one per organization and month, from the month's rollups,
and this module alone changes an invoice afterwards (paid, open again after a refund or a
chargeback, pushed to the payment provider) — billing.paying asks, under the invoice's row lock.

Idempotent: an invoice is unique per organization and month, and the close runs in its turn on the
rollup lock (billing.rollups), so running it twice, or on two workers at once, makes one invoice.
Usage that reaches the ledger after its month was closed is counted on the next open month's
invoice (the rollup pass assigns it there), so nothing is invoiced twice or never.

Lines: one per model, meter and unit price (a price change within the month makes two lines), with
the exact amount in nano-units; amounts are rounded to the currency's minor unit only when charged.
Prepaid accounts paid request by request from their credit: their invoice is a statement, paid by
credit. Invoiced accounts: what credit remains is applied, the rest is due and goes to the payment
provider (billing.payments).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from billing import budgets, money, rollups
from billing.models import Account, Invoice, InvoiceLine, UsageRollup
from tenancy import audit
from tenancy.audit import Actor

log = logging.getLogger("billing.invoicing")
METERS = (
    ("input", "prompt_tokens", "input_cost"),  # its quantity is the prompt tokens less the cached ones
    ("cached input", "cached_tokens", "cached_cost"),
    ("output", "completion_tokens", "output_cost"),
)
TOKEN_METERS = {meter for meter, _, _ in METERS}  # a batch request's have a batch line of their own
TRAINING = ("training", "training_tokens", "training_cost")
REPLICAS = ("replica_minutes", "replica_minutes", "replica_cost")  # dedicated endpoints


class CloseError(Exception):
    pass


def closable(now: datetime) -> date:
    """The first month not yet closable: a month is closed once it has ended and
    BILLING_CLOSE_GRACE_HOURS have passed (so usage spooled in its last moments has arrived)."""
    return rollups.month_of(now - timedelta(hours=settings.BILLING_CLOSE_GRACE_HOURS))


def close_due(now: datetime | None = None) -> list[Invoice]:
    """The periodic close: every organization's every ended month with usage and no invoice."""
    rollups.roll_up()
    before = closable(now or timezone.now())
    due = (
        UsageRollup.all_orgs.filter(billing_month__lt=before)
        .values_list("organization_id", "billing_month")
        .distinct()
        .order_by("billing_month", "organization_id")
    )
    invoiced = set(Invoice.all_orgs.filter(period__lt=before).values_list("organization_id", "period"))
    made = []
    for organization_id, month in list(due):
        if (organization_id, month) in invoiced:
            continue
        invoice = _close(organization_id, month)
        if invoice is not None:
            made.append(invoice)
    return made


def close_month(organization_id: int, month: date, *, now: datetime | None = None) -> Invoice | None:
    """The organization's invoice for `month` (its first day): made now, or the one made before.
    None for a month without usage."""
    if month >= closable(now or timezone.now()):
        raise CloseError(f"{month:%Y-%m} cannot be closed before it has ended (and the grace period has passed).")
    rollups.roll_up()
    return _close(organization_id, month)


def _close(organization_id: int, month: date) -> Invoice | None:
    """After a rollup pass: what arrives from now on is rolled up into the next open month."""
    budgets.ensure_account(organization_id)
    with transaction.atomic():
        rollups.take_turn()
        existing = Invoice.all_orgs.filter(organization_id=organization_id, period=month).first()
        if existing is not None:
            return existing
        lines = _lines(organization_id, month)
        if not lines:
            return None
        invoice = _issue(organization_id, month, lines)
    if invoice.amount_due:
        from billing import tasks

        transaction.on_commit(lambda: tasks.collect_invoice.delay(invoice.pk))
    return invoice


def _lines(organization_id: int, month: date) -> list[dict]:
    rows = (
        UsageRollup.all_orgs.filter(organization_id=organization_id, billing_month=month)
        .annotate(batch=Q(route__startswith=rollups.BATCH_ROUTE_PREFIX))
        .values("model", "price_version", "batch")
        .annotate(*[Sum(name) for _, name, _ in (*METERS, TRAINING, REPLICAS)])
        .annotate(*[Sum(name) for _, _, name in (*METERS, TRAINING, REPLICAS)])
        .order_by("model", "price_version", "batch")
    )
    lines = []
    for row in rows:
        for meter, tokens, cost in (*METERS, TRAINING, REPLICAS):
            quantity, amount = row[f"{tokens}__sum"], row[f"{cost}__sum"]
            if meter == "input":
                quantity -= row["cached_tokens__sum"]
            if not quantity:
                continue
            lines.append(
                {
                    "model": row["model"],
                    "meter": f"batch {meter}" if row["batch"] and meter in TOKEN_METERS else meter,
                    "quantity": quantity,
                    "amount": amount,
                    "unit_price": amount // quantity,
                    "price_version": row["price_version"],
                }
            )
    return lines


def _issue(organization_id: int, month: date, lines: list[dict]) -> Invoice:
    account = Account.all_orgs.select_for_update().get(organization_id=organization_id)
    subtotal = sum(line["amount"] for line in lines)
    if account.mode == Account.Mode.PREPAID:
        applied = subtotal  # debited from the credit as each request settled
    else:
        applied = min(max(account.credit - account.reserved, 0), subtotal)
        if applied:
            Account.all_orgs.filter(pk=account.pk).update(credit=F("credit") - applied)
    due = subtotal - applied
    now = timezone.now()
    invoice = Invoice.all_orgs.create(
        organization_id=organization_id,
        number=f"INV-{month:%Y%m}-{organization_id:06d}",
        period=month,
        mode=account.mode,
        currency=money.currency(),
        subtotal=subtotal,
        credits_applied=applied,
        amount_due=due,
        status=Invoice.Status.OPEN if due else Invoice.Status.PAID,
        paid_at=None if due else now,
    )
    InvoiceLine.all_orgs.bulk_create(
        [InvoiceLine(organization_id=organization_id, invoice=invoice, **line) for line in lines]
    )
    audit.record(
        "billing.invoice_issued",
        actor=Actor.system(),
        organization_id=organization_id,
        target=invoice,
        data={
            "number": invoice.number,
            "period": f"{month:%Y-%m}",
            "subtotal": str(money.to_decimal(subtotal)),
            "credits_applied": str(money.to_decimal(applied)),
            "amount_due": str(money.to_decimal(due)),
        },
    )
    log.info("invoice %s: %d line(s), amount due %s", invoice.number, len(lines), money.display(due))
    return invoice


# --- An invoice's state after the close (asked by billing.paying, inside its transaction) ---------


def paid(invoice_id: int) -> None:
    """Its amount due was paid."""
    Invoice.all_orgs.filter(pk=invoice_id).exclude(status=Invoice.Status.PAID).update(
        status=Invoice.Status.PAID, paid_at=timezone.now(), amount_paid=F("amount_due")
    )


def taken_back(invoice_id: int, nanos: int) -> None:
    """Money that paid it went back to the card (a refund, a chargeback): open again for that much."""
    invoice = Invoice.all_orgs.select_for_update().get(pk=invoice_id)
    invoice.amount_paid = max(0, invoice.amount_paid - nanos)
    if invoice.outstanding and invoice.status == Invoice.Status.PAID:
        invoice.status, invoice.paid_at = Invoice.Status.OPEN, None
    invoice.save(update_fields=["amount_paid", "status", "paid_at"])


def given_back(invoice_id: int, nanos: int) -> None:
    """Disputed money came back (a dispute won): paid again when nothing is outstanding."""
    invoice = Invoice.all_orgs.select_for_update().get(pk=invoice_id)
    invoice.amount_paid = min(invoice.amount_due, invoice.amount_paid + nanos)
    if not invoice.outstanding and invoice.status == Invoice.Status.OPEN:
        invoice.status, invoice.paid_at = Invoice.Status.PAID, timezone.now()
    invoice.save(update_fields=["amount_paid", "status", "paid_at"])


def pushed(invoice_id: int, provider: str, provider_invoice_id: str) -> None:
    """The payment provider holds it now (and collects it)."""
    Invoice.all_orgs.filter(pk=invoice_id).update(provider=provider, provider_invoice_id=provider_invoice_id)
