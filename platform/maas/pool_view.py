"""The back office's pool page: every node with each accelerator's holder, the live allocations,
the fine-tuning queue in claim order with each job's reason and estimated start, and the last
day's utilisation per node and per organization."""

from __future__ import annotations

from datetime import timedelta

from django.template.response import TemplateResponse
from django.utils import timezone

from compute import allocations, selectors
from fine_tuning import queue
from fine_tuning.models import FineTuningJob
from tenancy.models import Organization


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def pool_page(request, site):
    now = timezone.now()
    live = {n.pk for n in allocations.live_nodes(now)}
    held = selectors.held_now()
    nodes = []
    for node in selectors.nodes():
        devices = []
        for accelerator in node.accelerators.all():
            holders = [a for a in held if a.node_id == node.pk and accelerator.index in a.devices]
            devices.append({"index": accelerator.index, "holders": holders})
        nodes.append({"node": node, "up": node.pk in live, "devices": devices})
    waiting = list(FineTuningJob.all_orgs.filter(status=FineTuningJob.Status.QUEUED).select_related("organization"))
    places = queue.places(waiting)
    waiting.sort(key=lambda job: places[job.pk].position if job.pk in places else 10**9)
    usage = selectors.utilisation(now - timedelta(days=1), now)
    names = dict(Organization.objects.filter(pk__in=[k for k in usage["organizations"] if k]).values_list("pk", "slug"))
    context = {
        **site.each_context(request),
        "title": "Pool",
        "nodes": nodes,
        "allocations": held,
        "queue": [{"job": job, "place": places.get(job.pk)} for job in waiting],
        "node_usage": [
            {**row, **{k: _hours(row[k]) for k in ("available", "training", "serving", "idle")}}
            for row in usage["nodes"]
        ],
        "organization_usage": sorted(
            (
                {
                    "organization": names.get(org, "platform"),
                    "training": _hours(values["training"]),
                    "serving": _hours(values["serving"]),
                }
                for org, values in usage["organizations"].items()
            ),
            key=lambda row: row["organization"],
        ),
    }
    return TemplateResponse(request, "admin/pool.html", context)
