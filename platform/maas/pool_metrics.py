"""/metrics/pool: the pool for Prometheus, read from the inventory at each scrape — accelerators
per node and state, what each organization holds, cumulative accelerator-seconds by kind (rate()
of them is utilisation), and the fine-tuning queue with its oldest wait.

Scrapers present `Authorization: Bearer <METRICS_TOKEN>`; without a token configured, only
loopback clients may read it (the embedded default, a Prometheus beside the platform)."""

from __future__ import annotations

import hmac
from ipaddress import ip_address

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from compute import allocations, selectors
from fine_tuning import selectors as fine_tuning


class PoolCollector:
    def collect(self):
        now = timezone.now()
        nodes = selectors.nodes()
        live = {n.pk for n in allocations.live_nodes(now)}
        held = selectors.held_now()
        up = GaugeMetricFamily("maas_pool_node_up", "1 while the node heartbeats", labels=["node"])
        count = GaugeMetricFamily(
            "maas_pool_accelerators", "Accelerators by node and state", labels=["node", "accelerator", "state"]
        )
        for node in nodes:
            up.add_metric([node.name], 1.0 if node.pk in live else 0.0)
            mine = [a for a in held if a.node_id == node.pk and a.state == "active"]
            training = {d for a in mine if a.kind == "training" for d in a.devices}
            serving = {d for a in mine if a.kind == "serving" for d in a.devices}
            lent = training & serving
            states = {
                "training": len(training - lent),
                "serving": len(serving - lent),
                "lent": len(lent),
                "free": node.accelerator_count - len(training | serving),
            }
            for state, value in states.items():
                count.add_metric([node.name, node.accelerator, state], value)
        yield up
        yield count
        organizations = GaugeMetricFamily(
            "maas_pool_organization_accelerators", "Accelerators held now", labels=["organization", "kind"]
        )
        totals: dict = {}
        for allocation in held:
            if allocation.state == "active":
                slug = allocation.organization.slug if allocation.organization else "platform"
                totals[(slug, allocation.kind)] = totals.get((slug, allocation.kind), 0) + len(allocation.devices)
        for (slug, kind), value in sorted(totals.items()):
            organizations.add_metric([slug, kind], value)
        yield organizations
        seconds = CounterMetricFamily(
            "maas_pool_accelerator_seconds", "Accelerator-seconds held, by node and kind", labels=["node", "kind"]
        )
        for (node, kind), value in sorted(selectors.accelerator_seconds_total(now).items()):
            seconds.add_metric([node, kind], value)
        yield seconds
        queue = fine_tuning.queue_summary(now)
        yield GaugeMetricFamily("maas_fine_tuning_jobs_queued", "Fine-tuning jobs waiting", value=queue["queued"])
        yield GaugeMetricFamily(
            "maas_fine_tuning_oldest_wait_seconds", "How long the longest-waiting job has waited", value=queue["oldest"]
        )


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(presented.encode(), token.encode())
    if settings.PRODUCTION:
        # Behind a proxy on the same host every request comes from loopback: only the token counts.
        return False
    try:
        return ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def pool_metrics(request):
    if not _allowed(request):
        why = "present the metrics token" if settings.METRICS_TOKEN or not settings.PRODUCTION else "set METRICS_TOKEN"
        return HttpResponse(f"Forbidden: {why}.\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
