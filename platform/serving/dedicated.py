"""Dedicated endpoints are billed for their replicas' time, per replica-minute, at the model's
replica-minute price (their calls are priced per token too while their replicas are shared
runtimes).

A started minute counts: an endpoint that becomes ready at 10:00:30 and stops at 10:02:10 is billed
10:00 to 10:03, three minutes per serving replica. `Endpoint.metered_until` is the minute up to which
its time is in the ledger; it only moves forward, under the endpoint's row lock and in the
transaction that writes the ledger row (whose request id names the endpoint and the start minute),
so a pass that runs twice, or alongside a stop, bills each minute once.

Billing happens when the endpoint leaves `ready` (through its last started minute) and every minute
while it is ready (through the last whole minute), by a periodic pass (serving.reconcile) that also stops an endpoint
whose organization cannot pay for its next minute (prepaid credit used up or monthly limit reached),
with the reason, so a dedicated endpoint never runs on unpaid time for more than a minute.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from billing import services as billing
from serving.models import Endpoint, EndpointReplica

log = logging.getLogger("serving.dedicated")
MINUTE = timedelta(minutes=1)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    floor = floor_minute(moment)
    return floor if floor == moment else floor + MINUTE


def is_dedicated(endpoint: Endpoint) -> bool:
    return endpoint.billing_mode == Endpoint.Billing.DEDICATED


def serving_replicas(endpoint: Endpoint) -> int:
    return EndpointReplica.all_orgs.filter(endpoint=endpoint, state=EndpointReplica.State.SERVING).count()


def begin(endpoint: Endpoint, now: datetime | None = None) -> None:
    """The endpoint is ready (caller holds its row lock): its time counts from this minute, or from
    where billing stopped if that is later (stopped and started within one minute)."""
    start = floor_minute(now or timezone.now())
    if endpoint.metered_until is None or endpoint.metered_until < start:
        endpoint.metered_until = start
        endpoint.save(update_fields=["metered_until", "updated_at"])


def bill(endpoint: Endpoint, until: datetime) -> int:
    """Bill the replica-minutes from metered_until to `until` (a minute boundary) at the number of
    replicas serving it now; the caller holds the endpoint's row lock. Returns the minutes billed."""
    start = endpoint.metered_until
    if start is None or until <= start:
        return 0
    minutes = int((until - start) / MINUTE)
    replicas = serving_replicas(endpoint)
    if replicas:
        billing.record_replica_minutes(
            endpoint_id=endpoint.pk,
            organization_id=endpoint.organization_id,
            model=endpoint.model,
            base_model=endpoint.base_model_id,
            replica_minutes=minutes * replicas,
            start=start,
        )
    endpoint.metered_until = until
    endpoint.save(update_fields=["metered_until", "updated_at"])
    return minutes * replicas


def on_status_change(endpoint: Endpoint, before: str, to: str) -> None:
    """Called by every status change, under the row lock."""
    if not is_dedicated(endpoint):
        return
    if before == Endpoint.Status.READY and to != Endpoint.Status.READY:
        bill(endpoint, ceil_minute(timezone.now()))
    elif to == Endpoint.Status.READY:
        begin(endpoint)


def unpaid_reason(organization_id: int, model: str, base_model: str, replicas: int) -> str | None:
    """Why the organization cannot pay for a minute of `replicas` replicas of the model, if it cannot."""
    price = billing.replica_minute_price(organization_id, model, base_model)
    refused = billing.shortfall(organization_id, price * max(replicas, 1))
    return refused.message if refused is not None else None
