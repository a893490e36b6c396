"""Payment providers behind one interface (billing.payments.types.Provider): Stripe, and a fake
one for the embedded default and for development. PAYMENT_PROVIDER chooses."""

from __future__ import annotations

from django.conf import settings

from billing.payments.types import Provider


def get_provider() -> Provider:
    if settings.PAYMENT_PROVIDER == "stripe":
        from billing.payments.stripe_provider import StripeProvider

        return StripeProvider()
    from billing.payments.fake import FakeProvider

    return FakeProvider()
