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


def own_replicas(endpoint_id: str):
    """A dedicated endpoint's own replicas, live ones first, then the last that ended."""
    from serving.models import Backend

    return Backend.objects.filter(deployment__key=endpoint_id).order_by("ended_at", "-created_at")[:10]


def deployment_events(key: str, limit: int = 20):
    """A deployment's last scaling decisions and replica changes, newest first."""
    from serving.models import DeploymentEvent

    return DeploymentEvent.objects.filter(deployment__key=key).order_by("-created_at", "-id")[:limit]
