"""A payment provider that charges nobody, for the embedded default: Stripe's test card tokens
behave as they do in Stripe's test mode (pm_card_visa pays, pm_card_chargeDeclined is declined),
and everything settles at once, so no webhook is needed."""

from __future__ import annotations

import hashlib

from billing.payments.types import (
    Card,
    Charge,
    InvalidSignature,
    InvoiceItem,
    PaymentError,
    ProviderEvent,
    PushedInvoice,
)

CARDS = {
    "pm_card_visa": ("visa", "4242"),
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "8431"),
    "pm_card_chargeDeclined": ("visa", "0002"),
}
DECLINED = {"pm_card_chargeDeclined"}


def _id(prefix: str, key: str) -> str:
    return f"{prefix}_fake_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


class FakeProvider:
    name = "fake"

    def ensure_customer(self, *, organization_id: int, name: str, email: str) -> str:
        return f"cus_fake_{organization_id}"

    def save_card(self, *, customer_id: str, payment_method: str) -> Card:
        if payment_method not in CARDS:
            raise PaymentError(f"Unknown test card '{payment_method}': use one of {', '.join(sorted(CARDS))}.")
        brand, last4 = CARDS[payment_method]
        return Card(payment_method, brand, last4)

    def charge(self, *, customer_id, payment_method_id, amount_minor, currency, idempotency_key, metadata) -> Charge:
        payment_id = _id("pi", idempotency_key)
        if payment_method_id in DECLINED:
            return Charge(payment_id, "failed", "Your card was declined.")
        return Charge(payment_id, "succeeded")

    def push_invoice(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        currency: str,
        items: list[InvoiceItem],
        idempotency_key: str,
        metadata: dict,
    ) -> PushedInvoice:
        card = payment_method_id
        invoice_id = _id("in", idempotency_key)
        if not card or card in DECLINED:
            message = "Your card was declined." if card else "No card on file."
            return PushedInvoice(invoice_id, "failed", "", message)
        return PushedInvoice(invoice_id, "paid", _id("pi", idempotency_key))

    def pay_invoice(self, *, provider_invoice_id: str, payment_method_id: str, idempotency_key: str) -> PushedInvoice:
        if not payment_method_id or payment_method_id in DECLINED:
            return PushedInvoice(provider_invoice_id, "failed", "", "Your card was declined.")
        return PushedInvoice(provider_invoice_id, "paid", _id("pi", idempotency_key))

    def parse_event(self, body: bytes, signature: str | None) -> ProviderEvent:
        raise InvalidSignature("The fake provider sends no webhooks.")
