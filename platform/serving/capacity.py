"""Dedicated endpoints in the pool: each replica on a runtime that runs on a pool node holds an
accelerator of that node (compute.allocations), ahead of training; while it is idle it lends the
accelerator to training, and takes it back when it is called again. Per-token endpoints share
their runtime's base model as adapters and hold nothing of their own."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from billing.models import UsageEvent
from billing.reports import COMPLETION_ROUTES
from compute import allocations
from serving.models import Backend, Endpoint, EndpointReplica

REPLICA_ACCELERATORS = 1
ROOM_TASK = "serving.tasks.replica_has_room"


def holder(endpoint: Endpoint, backend: Backend) -> str:
    return f"{endpoint.pk}@{backend.name}"


def needs_room(endpoint: Endpoint, backend: Backend) -> bool:
    return endpoint.billing_mode == Endpoint.Billing.DEDICATED and backend.node_id is not None


def hold(endpoint: Endpoint, backend: Backend) -> allocations.ReplicaRoom | None:
    """The replica's accelerators on the backend's node (None when it needs none)."""
    if not needs_room(endpoint, backend):
        return None
    return allocations.hold_for_replica(
        backend.node_id,
        holder=holder(endpoint, backend),
        organization_id=endpoint.organization_id,
        accelerators=REPLICA_ACCELERATORS,
        memory_bytes=0,
        notify=ROOM_TASK,
    )


def release(endpoint: Endpoint, reason: str) -> None:
    allocations.release(f"{endpoint.pk}@", reason, prefix=True)


def parse(held_by: str) -> tuple[str, str]:
    endpoint_id, _, backend_name = held_by.partition("@")
    return endpoint_id, backend_name


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
    placed = EndpointReplica.all_orgs.filter(endpoint=endpoint).values("backend_id")
    for backend in Backend.objects.filter(pk__in=placed, node__isnull=False):
        asked += allocations.set_idle(holder(endpoint, backend), None if called else (last or now))
    return asked


def release_holder(held_by: str, reason: str) -> None:
    allocations.release(held_by, reason)
