"""Money: integer nano-units (1e-9) of one currency, the setting BILLING_CURRENCY.

Why nano-units rather than micro-units: a token is cheaper than one micro-unit (at 0.10 per million
tokens, a token costs 0.1 micro-units), so a per-token price in micro-units cannot be exact, and
rounding each request's cost would drift from the sum of its tokens. With prices in nano-units per
token, every cost is price times tokens, an exact integer, and a sum of costs equals the cost of the
summed tokens; nothing is rounded until an invoice is paid in the currency's own minor unit.
A signed 64-bit integer of nano-units holds 9.2 billion currency units.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from django.conf import settings

NANOS = 10**9
# The largest amount taken from outside (a limit, a credit, a price): a billion currency units, so
# that sums of them stay far inside the database's signed 64-bit integers (9.2e18 nano-units).
MAX_NANOS = 10**18
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are shown and entered per million tokens


class MoneyError(ValueError):
    pass


def currency() -> str:
    return settings.BILLING_CURRENCY


def to_decimal(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def from_decimal(amount: Decimal | str | int) -> int:
    """An amount in currency units to nano-units, refusing what is not exactly representable."""
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation:
        raise MoneyError(f"'{amount}' is not an amount") from None
    if not value.is_finite():
        raise MoneyError(f"'{amount}' is not an amount")
    nanos = value.scaleb(9)
    if nanos != nanos.to_integral_value():
        raise MoneyError(f"'{amount}' has more than 9 decimal places")
    if abs(nanos) > MAX_NANOS:
        raise MoneyError(f"'{amount}' is more than the largest amount, {MAX_NANOS // NANOS:,}")
    return int(nanos)


def per_token_from_per_million(amount: Decimal | str | int) -> int:
    """A price per million tokens (as shown) to nano-units per token (as stored and charged)."""
    nanos_per_million = from_decimal(amount)
    if nanos_per_million % TOKENS_PER_PRICE_UNIT:
        raise MoneyError(f"a price per million tokens is a multiple of 0.001 (got {amount})")
    return nanos_per_million // TOKENS_PER_PRICE_UNIT


def per_million(nanos_per_token: int) -> str:
    """A price per token as shown: per million tokens, exact, without trailing zeros."""
    return exact(nanos_per_token * TOKENS_PER_PRICE_UNIT)


def exact(nanos: int) -> str:
    """An amount as an exact decimal string without trailing zeros or exponent: '10', '0.05'."""
    text = f"{to_decimal(nanos):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def to_minor_units(nanos: int, exponent: int = 2) -> int:
    """Nano-units to the currency's minor unit (cents for 2), rounding half to even: only for what a
    payment provider charges."""
    return int(to_decimal(nanos).scaleb(exponent).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


def minor_exponent() -> int:
    """Decimal places of the currency's minor unit (2 for cents; 0 for yen)."""
    return 0 if currency() in ZERO_DECIMAL_CURRENCIES else 2


def from_minor_units(amount: int, exponent: int = 2) -> int:
    return amount * 10 ** (9 - exponent)


def display(nanos: int, places: int = 6) -> str:
    """For people: a fixed number of decimals (never used to compute)."""
    return f"{to_decimal(nanos).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)} {currency().upper()}"
