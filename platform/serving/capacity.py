"""Dedicated endpoints in the pool: each of their own replicas holds an accelerator (placed by
serving.replicas, ahead of training); while the endpoint is idle its replicas lend their
accelerators to training, and take them back when it is called again."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from billing.models import UsageEvent
from billing.reports import COMPLETION_ROUTES
from compute import allocations
from serving.models import Backend, Endpoint, ReplicaState


def lend_idle(endpoint: Endpoint, now: datetime | None = None) -> list[str]:
    """Tell the pool whether the endpoint's replicas are being called: idle ones lend their
    accelerators to training; one called within COMPUTE_LEND_IDLE_SECONDS takes them back.
    Returns the training jobs asked to give them back."""
    now = now or timezone.now()
    last = UsageEvent.all_orgs.filter(
        organization_id=endpoint.organization_id, endpoint_id=endpoint.pk, route__in=COMPLETION_ROUTES
    ).aggregate(at=Max("created_at"))["at"]
    called = last is not None and last > now - timedelta(seconds=settings.COMPUTE_LEND_IDLE_SECONDS)
    asked = []
    own = Backend.objects.filter(deployment__key=endpoint.pk, state=ReplicaState.READY).values_list("name", flat=True)
    for name in own:
        asked += allocations.set_idle(name, None if called else (last or now))
    return asked
