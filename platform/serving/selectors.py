"""Reads of serving objects, shared by the management API and the console."""

from __future__ import annotations

from django.db.models import Prefetch

from serving.models import Endpoint, EndpointReplica

# One query for every listed endpoint's replicas, not one per endpoint.
PLACEMENTS = Prefetch(
    "placements", queryset=EndpointReplica.all_orgs.select_related("backend").order_by("backend__name")
)


def live_endpoints(organization_id: int):
    """The organization's endpoints that are not deleted, newest first, with their placements."""
    return Endpoint.all_orgs.filter(organization_id=organization_id, deleted_at=None).prefetch_related(PLACEMENTS)


def endpoint(organization_id: int, endpoint_id: str) -> Endpoint | None:
    return live_endpoints(organization_id).filter(pk=endpoint_id).first()


def ready_replica_url(base_model_id: str) -> str | None:
    """A ready replica of the model's shared deployment, if one serves."""
    from serving.deployments import shared_key
    from serving.models import Backend, ReplicaState

    return (
        Backend.objects.filter(deployment__key=shared_key(base_model_id), state=ReplicaState.READY)
        .values_list("url", flat=True)
        .first()
    )


def deployments():
    """Every deployment with its live replicas (the back office's serving page)."""
    from serving.models import Deployment

    return Deployment.objects.select_related("base_model", "endpoint").order_by("key")
