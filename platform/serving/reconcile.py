"""The periodic passes over endpoints, above their state machine (serving.endpoints, which alone
writes endpoint and replica rows): reconciliation, and the metering of dedicated endpoints' time.

Reconciliation: what each replica should serve for the endpoints, against what it reports.

A periodic task (ENDPOINT_RECONCILE_SECONDS). For every live endpoint's placements: a replica
that cannot be reached is marked failed; one that lost an ft: model's adapter (it restarted) gets
it back, and is probed; a failed placement is probed again, and serves again once it passes. Then
the endpoint follows its placements: ready with none serving becomes failed (with the reasons),
failed with one serving becomes ready again — no one has to act. A failed endpoint without
placements (no replica was there when it was published) is placed again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from serving import capacity, dedicated, endpoints, replica_client
from serving.models import Backend, Endpoint, EndpointReplica, ReplicaState

log = logging.getLogger("serving.reconcile")
S = Endpoint.Status
State = EndpointReplica.State


def reconcile() -> dict[str, str]:
    """Returns each examined endpoint's status afterwards."""
    outcome = {}
    live = Endpoint.all_orgs.filter(deleted_at=None, status__in=[S.READY, S.FAILED]).select_related("base_model")
    served_by: dict[int, set[str] | None] = {}  # one /v1/models per replica per pass
    for endpoint in live:
        placements = list(EndpointReplica.all_orgs.filter(endpoint=endpoint).select_related("backend"))
        gone = [p for p in placements if not _running(p.backend)]
        if gone:  # replicas the pool ended (scaled down, restarted): the endpoint follows the live ones
            endpoints.forget_placements([p.pk for p in gone])
            placements = [p for p in placements if p not in gone]
        if not placements and (endpoint.status == S.FAILED or endpoint.billing_mode == Endpoint.Billing.PER_TOKEN):
            for backend in endpoints.candidates(endpoint):
                endpoints.place(endpoint, backend)
        for placement in placements:
            _check(endpoint, placement, served_by)
        if endpoint.billing_mode == Endpoint.Billing.DEDICATED:
            endpoints.place_new_replicas(endpoint)
        outcome[endpoint.pk] = endpoints.follow_replicas(endpoint.pk)
        if endpoint.billing_mode == Endpoint.Billing.DEDICATED and outcome[endpoint.pk] == S.READY:
            capacity.lend_idle(endpoint)
    # A publish whose message was lost, or that waited for accelerators it now has, is run again
    # (it is idempotent and checks the status under the row lock).
    stale = timezone.now() - timedelta(seconds=2 * settings.ENDPOINT_RECONCILE_SECONDS)
    for endpoint_id in Endpoint.all_orgs.filter(deleted_at=None, status=S.DEPLOYING, updated_at__lt=stale).values_list(
        "pk", flat=True
    ):
        outcome[endpoint_id] = endpoints.publish(endpoint_id).status
    return outcome


def _running(backend: Backend) -> bool:
    """Registered by hand and enabled, or run by the pool and not over."""
    if backend.deployment_id is None:
        return backend.enabled
    return backend.state in (ReplicaState.STARTING, ReplicaState.READY)


def _check(endpoint: Endpoint, placement: EndpointReplica, served_by: dict) -> None:
    backend = placement.backend
    if backend.pk not in served_by:
        served_by[backend.pk] = replica_client.served_models(backend) if backend.enabled else None
    served = served_by[backend.pk]
    if served is None:
        endpoints.record_replica(placement.pk, State.FAILED, f"replica {backend.name} cannot be reached")
        return
    name = endpoints.upstream_name(endpoint, backend)
    if placement.state == State.SERVING and name in served:
        return
    result = endpoints.place(endpoint, backend)  # loads what is missing, probes, records the state
    if result.ok and name not in served:
        served.add(name)
        log.info("endpoint %s: %s reloaded on %s", endpoint.pk, name, backend.name)


def meter_dedicated(now: datetime | None = None) -> int:
    """Bill every ready dedicated endpoint through the last whole minute (serving.dedicated), and
    stop those whose next minute cannot be paid for. Returns the replica-minutes billed."""
    now = now or timezone.now()
    total = 0
    ids = Endpoint.all_orgs.filter(
        billing_mode=Endpoint.Billing.DEDICATED, status=Endpoint.Status.READY, deleted_at=None
    ).values_list("pk", flat=True)
    for endpoint_id in ids:
        try:
            with transaction.atomic():
                endpoint = Endpoint.all_orgs.select_for_update().get(pk=endpoint_id)
                if endpoint.status != Endpoint.Status.READY or not dedicated.is_dedicated(endpoint):
                    continue
                total += dedicated.bill(endpoint, dedicated.floor_minute(now))
                reason = dedicated.unpaid_reason(
                    endpoint.organization_id, endpoint.model, endpoint.base_model_id, endpoint.replicas
                )
                if reason is not None:
                    endpoints.stop_unpaid(endpoint, reason)
        except Exception:
            log.exception("metering the dedicated endpoint %s failed; the next pass retries", endpoint_id)
    return total
