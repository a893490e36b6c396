"""What the platform and a payment provider exchange, whichever provider it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class PaymentError(Exception):
    """The provider refused a request (a bad card token, say); the message is for the customer."""


class InvalidSignature(Exception):
    """A webhook whose signature does not verify: nothing in it is believed."""


@dataclass(frozen=True)
class Card:
    payment_method_id: str
    brand: str
    last4: str


@dataclass(frozen=True)
class Charge:
    provider_payment_id: str
    status: str  # succeeded | failed | pending
    failure_message: str = ""


@dataclass(frozen=True)
class PushedInvoice:
    provider_invoice_id: str
    status: str  # paid | open | failed
    provider_payment_id: str = ""
    failure_message: str = ""


@dataclass(frozen=True)
class InvoiceItem:
    description: str
    amount_minor: int  # negative for credit applied


@dataclass(frozen=True)
class ProviderEvent:
    """A verified webhook event, reduced to what the platform acts on.

    kind: payment_succeeded | payment_failed | refunded | disputed | dispute_won | invoice_paid |
    invoice_payment_failed | other
    """

    event_id: str
    type: str
    kind: str
    payload: dict
    provider_payment_id: str = ""
    provider_invoice_id: str = ""
    refunded_minor: int = 0
    disputed_minor: int = 0
    failure_message: str = ""
    metadata: dict = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def ensure_customer(self, *, organization_id: int, name: str, email: str) -> str: ...

    def save_card(self, *, customer_id: str, payment_method: str) -> Card: ...

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
        metadata: dict,
    ) -> Charge: ...

    def push_invoice(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        currency: str,
        items: list[InvoiceItem],
        idempotency_key: str,
        metadata: dict,
    ) -> PushedInvoice: ...

    def pay_invoice(self, *, provider_invoice_id: str, payment_method_id: str, idempotency_key: str) -> PushedInvoice:
        """Pay an invoice the provider holds, now (its own collection then finds it paid)."""

    def parse_event(self, body: bytes, signature: str | None) -> ProviderEvent: ...
