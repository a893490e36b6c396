"""Stripe, through its official SDK: the only module that imports `stripe`.

The API version is pinned (the one stripe==16.1.0 was built for), every write carries an
idempotency key derived from our own row ids (a retried task never charges or invoices twice), and
webhooks are verified on the raw body with Stripe's signature scheme (300 s tolerance).
STRIPE_API_BASE points the SDK elsewhere (a local Stripe fake in tests).
"""

from __future__ import annotations

import json

import stripe
from django.conf import settings

from billing.payments.types import (
    Card,
    Charge,
    InvalidSignature,
    InvoiceItem,
    PaymentError,
    ProviderEvent,
    PushedInvoice,
)

API_VERSION = "2026-10-28.endive"
SIGNATURE_TOLERANCE_SECONDS = 300


class StripeProvider:
    name = "stripe"

    def __init__(self) -> None:
        addresses = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
        self.client = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY, stripe_version=API_VERSION, base_addresses=addresses, max_network_retries=2
        ).v1

    def ensure_customer(self, *, organization_id: int, name: str, email: str) -> str:
        customer = self.client.customers.create(
            params={"name": name, "email": email, "metadata": {"organization_id": str(organization_id)}},
            options={"idempotency_key": f"maas-customer-{organization_id}"},
        )
        return customer.id

    def save_card(self, *, customer_id: str, payment_method: str) -> Card:
        try:
            method = self.client.payment_methods.attach(payment_method, params={"customer": customer_id})
            self.client.customers.update(
                customer_id, params={"invoice_settings": {"default_payment_method": method.id}}
            )
        except stripe.InvalidRequestError as error:
            raise PaymentError(error.user_message or "The card could not be saved.") from None
        card = method.card
        return Card(method.id, card.brand if card else "", card.last4 if card else "")

    def charge(self, *, customer_id, payment_method_id, amount_minor, currency, idempotency_key, metadata) -> Charge:
        try:
            intent = self.client.payment_intents.create(
                params={
                    "amount": amount_minor,
                    "currency": currency,
                    "customer": customer_id,
                    "payment_method": payment_method_id,
                    "confirm": True,
                    "off_session": True,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as error:
            intent = (error.error and error.error.payment_intent) or None
            return Charge(intent.id if intent else "", "failed", error.user_message or "The card was declined.")
        status = intent.status
        return Charge(
            intent.id, "succeeded" if status == "succeeded" else "failed" if status == "canceled" else "pending"
        )

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
        for n, item in enumerate(items):
            self.client.invoice_items.create(
                params={
                    "customer": customer_id,
                    "amount": item.amount_minor,
                    "currency": currency,
                    "description": item.description,
                    "metadata": metadata,
                },
                options={"idempotency_key": f"{idempotency_key}-item-{n}"},
            )
        params = {
            "customer": customer_id,
            "collection_method": "charge_automatically",
            "auto_advance": True,
            "pending_invoice_items_behavior": "include",
            "metadata": metadata,
        }
        if payment_method_id:
            params["default_payment_method"] = payment_method_id
        invoice = self.client.invoices.create(params=params, options={"idempotency_key": idempotency_key})
        invoice = self.client.invoices.finalize_invoice(
            invoice.id, options={"idempotency_key": f"{idempotency_key}-finalize"}
        )
        # Stripe collects a finalized automatic invoice by itself; invoice.paid or
        # invoice.payment_failed reports how it went.
        return PushedInvoice(invoice.id, "paid" if invoice.status == "paid" else "open")

    def pay_invoice(self, *, provider_invoice_id: str, payment_method_id: str, idempotency_key: str) -> PushedInvoice:
        try:
            invoice = self.client.invoices.pay(
                provider_invoice_id,
                params={"payment_method": payment_method_id, "off_session": True},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as error:
            return PushedInvoice(provider_invoice_id, "failed", "", error.user_message or "The card was declined.")
        except stripe.InvalidRequestError as error:
            if "already paid" in str(error).lower():  # its own collection was first: one payment all the same
                return PushedInvoice(provider_invoice_id, "paid")
            raise
        status = "paid" if invoice.status == "paid" else "open"
        return PushedInvoice(invoice.id, status, getattr(invoice, "payment_intent", None) or "")

    def parse_event(self, body: bytes, signature: str | None) -> ProviderEvent:
        try:
            event = stripe.Webhook.construct_event(
                body, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=SIGNATURE_TOLERANCE_SECONDS
            )
        except (stripe.SignatureVerificationError, ValueError) as error:
            raise InvalidSignature(str(error)) from None
        payload = json.loads(body)
        obj = payload.get("data", {}).get("object", {})
        metadata = obj.get("metadata") or {}
        common = {"event_id": event.id, "type": event.type, "payload": payload, "metadata": metadata}
        match event.type:
            case "payment_intent.succeeded":
                return ProviderEvent(kind="payment_succeeded", provider_payment_id=obj.get("id", ""), **common)
            case "payment_intent.payment_failed":
                error = obj.get("last_payment_error") or {}
                return ProviderEvent(
                    kind="payment_failed",
                    provider_payment_id=obj.get("id", ""),
                    failure_message=error.get("message") or "The payment failed.",
                    **common,
                )
            case "charge.refunded":
                return ProviderEvent(
                    kind="refunded",
                    provider_payment_id=obj.get("payment_intent") or "",
                    refunded_minor=int(obj.get("amount_refunded") or 0),
                    **common,
                )
            case "charge.dispute.created" | "charge.dispute.funds_withdrawn":
                return ProviderEvent(
                    kind="disputed",
                    provider_payment_id=obj.get("payment_intent") or "",
                    disputed_minor=int(obj.get("amount") or 0),
                    **common,
                )
            case "charge.dispute.closed" | "charge.dispute.funds_reinstated":
                won = event.type == "charge.dispute.funds_reinstated" or obj.get("status") == "won"
                return ProviderEvent(
                    kind="dispute_won" if won else "other",
                    provider_payment_id=obj.get("payment_intent") or "",
                    disputed_minor=int(obj.get("amount") or 0),
                    **common,
                )
            case "invoice.paid" | "invoice.payment_succeeded":
                return ProviderEvent(kind="invoice_paid", provider_invoice_id=obj.get("id", ""), **common)
            case "invoice.payment_failed":
                return ProviderEvent(
                    kind="invoice_payment_failed",
                    provider_invoice_id=obj.get("id", ""),
                    failure_message="The invoice's automatic payment failed.",
                    **common,
                )
        return ProviderEvent(kind="other", **common)
