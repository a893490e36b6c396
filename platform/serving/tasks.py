from celery import shared_task

from serving import services
from serving.models import Backend


@shared_task(ignore_result=True)
def probe_backends() -> None:
    """Periodic: mark each enabled replica healthy or not (the gateway tries healthy ones first)."""
    for backend in Backend.objects.filter(enabled=True):
        services.probe(backend)
