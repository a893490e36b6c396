"""Amounts for people: nano-units shown in the billing currency."""

from django import template

from billing import money as billing_money

register = template.Library()


@register.filter
def amount(nanos, places: int = 2) -> str:
    return "" if nanos is None else billing_money.display(int(nanos), int(places))


@register.filter
def per_million(nanos_per_token) -> str:
    return f"{billing_money.per_million(int(nanos_per_token))} {billing_money.currency().upper()}"
