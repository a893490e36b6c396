"""The organization's view of the pool: what it holds now, its place and reasons in the queue, its
settings (priority class, share, quota), its accelerator-hours and its effective training time."""

from __future__ import annotations

from datetime import timedelta

from django.shortcuts import render
from django.utils import timezone

from compute import selectors as compute
from fine_tuning import selectors as fine_tuning
from frontend.views.access import nav_context, org_page
from tenancy.roles import Permission as P


@org_page(P.ORG_VIEW)
def compute_page(request, access):
    organization_id = access.organization.pk
    now = timezone.now()
    windows = {}
    for label, span in (("last 24 hours", timedelta(days=1)), ("last 7 days", timedelta(days=7))):
        used = compute.utilisation(now - span, now, organization_id=organization_id)["organizations"]
        mine = used.get(organization_id, {"training": 0.0, "serving": 0.0})
        windows[label] = {kind: round(seconds / 3600, 2) for kind, seconds in mine.items()}
    context = nav_context(
        access,
        "compute",
        held=compute.held_now(organization_id),
        settings=compute.organization_settings(organization_id),
        queued=[job for job in fine_tuning.jobs_of(organization_id, active_only=True) if job.status == "queued"],
        windows=windows,
        effective=fine_tuning.effective_training_time(organization_id, since=now - timedelta(days=7)),
    )
    return render(request, "frontend/compute.html", context)
