"""Which price applies: the version in effect at a moment, for a model and an organization.

Precedence: the model's own price before its base model's (a fine-tuned model without a price is
charged at its base's), and for each, the organization's own price before the list price. A model
with no price at all is free (its ledger rows name no version).

The gateway asks on every request, so versions are cached per process for
BILLING_CACHE_SECONDS; a price whose effective moment is in the future is cached too and
takes over exactly at that moment, so only a price entered to take effect at once waits that long.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from billing.models import Price
from billing.money import exact, per_million
from tenancy.detached import run_detached

log = logging.getLogger("billing.pricing")


def _amounts(price: Price) -> tuple[int, ...]:
    return (
        price.input_per_token,
        price.output_per_token,
        price.training_per_token,
        price.replica_minute,
        *price.batch_amounts,
        price.cached_amount,
    )


@dataclass(frozen=True)
class UnitPrice:
    """Nano-units per unit of each meter (a token; a replica-minute for dedicated endpoints), and
    the version they come from (None: free)."""

    version: int | None
    input: int
    output: int
    training: int
    replica_minute: int = 0  # records spooled before this meter existed carry four amounts
    batch_input: int = 0  # the batch meter (Price.batch_amounts); records carry what they were charged
    batch_output: int = 0
    input_cached: int = 0  # a cached prompt token (Price.cached_amount)

    def cost(
        self,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        training_tokens: int = 0,
        replica_minutes: int = 0,
        cached_tokens: int = 0,
    ) -> int:
        """(prompt - cached) x input + cached x input_cached + completion x output + ..."""
        return (
            (prompt_tokens - cached_tokens) * self.input
            + cached_tokens * self.input_cached
            + completion_tokens * self.output
            + training_tokens * self.training
            + replica_minutes * self.replica_minute
        )

    def for_batch(self) -> UnitPrice:
        """The same version, charging a batch request's tokens at the batch meter (a cached prompt
        token at the lower of the batch and the cached amounts)."""
        cached = min(self.batch_input, self.input_cached)
        return replace(self, input=self.batch_input, output=self.batch_output, input_cached=cached)

    def public(self) -> dict:
        """As /v1/models and the price list show it: per million tokens, exact decimal strings in
        the platform's currency."""
        return {
            "currency": settings.BILLING_CURRENCY,
            "input_per_million": per_million(self.input),
            "output_per_million": per_million(self.output),
            "training_per_million": per_million(self.training),
            "dedicated_replica_minute": exact(self.replica_minute),
            "batch_input_per_million": per_million(self.batch_input),
            "batch_output_per_million": per_million(self.batch_output),
            "input_cached_per_million": per_million(self.input_cached),
        }


FREE = UnitPrice(None, 0, 0, 0, 0)

# (organization id, model) -> (cached until, [(effective_from, is_own, UnitPrice)], newest first)
_cache: dict[tuple[int | None, str], tuple[float, list]] = {}


def _versions(organization_id: int | None, model: str) -> list:
    key = (organization_id, model)
    hit = _cache.get(key)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    owners = Q(organization=None) | Q(organization_id=organization_id) if organization_id else Q(organization=None)
    try:
        rows = [
            (p.effective_from, p.organization_id is not None, UnitPrice(p.pk, *_amounts(p)))
            for p in Price.objects.filter(owners, model=model).order_by("-effective_from", "-id")
        ]
    except DatabaseError as error:
        if hit is None:
            raise
        # The database is away: requests go on at the prices known (they are effective-dated, so the
        # cached versions still say which applies when), and the records wait in the outbox.
        log.warning("prices of %s not refreshed (%s); using the cached versions", model, error)
        rows = hit[1]
    _cache[key] = (time.monotonic() + settings.BILLING_CACHE_SECONDS, rows)
    return rows


def _in_effect(rows: list, at: datetime, own: bool) -> UnitPrice | None:
    for effective_from, is_own, price in rows:
        if is_own == own and effective_from <= at:
            return price
    return None


def current(organization_id: int | None, model: str, base_model: str = "", at: datetime | None = None) -> UnitPrice:
    at = at or timezone.now()
    for candidate in dict.fromkeys(m for m in (model, base_model) if m):
        rows = _versions(organization_id, candidate)
        price = _in_effect(rows, at, own=True) or _in_effect(rows, at, own=False)
        if price is not None:
            return price
    return FREE


async def acurrent(organization_id: int | None, model: str, base_model: str = "") -> UnitPrice:
    """The same, for the gateway: no thread hop when the versions are cached."""
    models = [m for m in (model, base_model) if m]
    now = time.monotonic()
    if all((hit := _cache.get((organization_id, m))) is not None and hit[0] > now for m in models):
        return current(organization_id, model, base_model)
    return await run_detached(current, organization_id, model, base_model)


def forget() -> None:
    """Drop the cache of this process (a price was just set here; tests)."""
    _cache.clear()
