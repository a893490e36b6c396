"""The serving app's Celery tasks: thin entry points into the endpoint state machine
(serving.endpoints) and the periodic passes above it (serving.reconcile)."""

from celery import shared_task

from serving import autoscale, endpoints, reconcile, services
from serving.models import Backend


@shared_task(ignore_result=True)
def probe_backends() -> None:
    """Periodic: mark each enabled replica healthy or not (the gateway tries healthy ones first)."""
    for backend in Backend.objects.filter(enabled=True, deployment=None):  # node agents probe their own
        services.probe(backend)


@shared_task(ignore_result=True, acks_late=True)
def publish_endpoint(endpoint_id: str) -> None:
    endpoints.publish(endpoint_id)


@shared_task(ignore_result=True, acks_late=True)
def unpublish_endpoint(endpoint_id: str) -> None:
    endpoints.unpublish(endpoint_id)


@shared_task(ignore_result=True)
def reconcile_endpoints() -> None:
    reconcile.reconcile()


@shared_task(ignore_result=True)
def meter_dedicated_endpoints() -> None:
    """Periodic: dedicated endpoints' replica-minutes into the ledger; unpaid ones stopped."""
    reconcile.meter_dedicated()


@shared_task(ignore_result=True)
def scale_deployments() -> None:
    """Periodic: every deployment follows its load, and its replicas follow its count."""
    autoscale.scale_all()


@shared_task(ignore_result=True, acks_late=True)
def converge_deployment(key: str) -> None:
    """A deployment's count changed (an endpoint published, resized or stopped): follow it now."""
    from serving.models import Deployment

    deployment = Deployment.objects.filter(key=key).select_related("base_model").first()
    if deployment is not None:
        autoscale.converge(deployment)
