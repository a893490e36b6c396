"""Published endpoints: the form, the live status, metrics, stop/start/delete."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from catalog import selectors as catalog
from frontend.forms import (
    EndpointForm,
)
from frontend.views.access import nav_context, org_page
from serving import endpoint_metrics, endpoints
from serving import selectors as serving
from serving.models import Endpoint
from tenancy.audit import Actor
from tenancy.roles import Permission as P


def _endpoint_form(access, data=None) -> EndpointForm:
    organization_id = access.organization.pk
    choices = [m.pk for m in catalog.visible_base_models(organization_id).filter(kind="chat")]
    choices += [m.pk for m in catalog.fine_tuned_models(organization_id)]
    return EndpointForm(data, models=choices)


@org_page(P.ENDPOINTS_VIEW)
def endpoints_page(request, access):
    can_manage = access.can(P.ENDPOINTS_MANAGE)
    form = _endpoint_form(access, request.POST or None) if can_manage else None
    if request.method == "POST":
        if not can_manage:
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        if form.is_valid():
            try:
                created = endpoints.create(
                    organization_id=access.organization.pk,
                    model=form.cleaned_data["model"],
                    settings=form.settings(),
                    actor=Actor.from_request(request),
                    created_by_id=request.user.pk,
                )
            except endpoints.EndpointError as exc:
                field = {"defaults": "max_tokens"}.get(exc.param, exc.param)
                form.add_error(field if field in form.fields else None, exc.message)
            else:
                messages.success(request, f"Publishing {created.name} as {created.pk}.")
                return redirect("frontend:endpoint", org=access.organization.slug, endpoint_id=created.pk)
    context = nav_context(
        access, "endpoints", endpoints=list(serving.live_endpoints(access.organization.pk)), form=form
    )
    return render(request, "frontend/endpoints.html", context)


@org_page(P.ENDPOINTS_VIEW, model=Endpoint)
def endpoint(request, access, endpoint_id: str):
    found = serving.endpoint(access.organization.pk, endpoint_id)
    if found is None:
        raise Http404("No such endpoint")
    organization_id = access.organization.pk
    per_minute = endpoint_metrics.series(organization_id, found.pk)["points"]
    chart = {
        "type": "line",
        "labels": [datetime.fromtimestamp(p["minute"], UTC).strftime("%H:%M") for p in per_minute],
        "datasets": [
            {"label": "requests", "data": [p["requests"] for p in per_minute]},
            {"label": "errors", "data": [p["errors"] for p in per_minute]},
        ],
        "y": "per minute",
    }
    context = nav_context(
        access,
        "endpoints",
        endpoint=found,
        metrics=endpoint_metrics.metrics(organization_id, found.pk),
        chart=chart,
        base_url=request.build_absolute_uri("/v1"),
        own_replicas=list(serving.own_replicas(found.pk)) if found.billing_mode == Endpoint.Billing.DEDICATED else [],
        events=list(serving.deployment_events(found.pk)),
    )
    if request.htmx:
        return render(request, "frontend/endpoint_status.html", context)
    return render(request, "frontend/endpoint.html", context)


@org_page(P.ENDPOINTS_MANAGE, model=Endpoint)
@require_POST
def endpoint_action(request, access, endpoint_id: str, verb: str):
    found = serving.endpoint(access.organization.pk, endpoint_id)
    if found is None:
        raise Http404("No such endpoint")
    change = {"stop": endpoints.stop, "start": endpoints.start, "delete": endpoints.delete}.get(verb)
    if change is None:
        raise Http404("No such action")
    try:
        change(found.pk, organization_id=access.organization.pk, actor=Actor.from_request(request))
    except endpoints.EndpointError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, {"stop": "Stopped.", "start": "Starting.", "delete": "Deleted."}[verb])
    if verb == "delete":
        return redirect("frontend:endpoints", org=access.organization.slug)
    return redirect("frontend:endpoint", org=access.organization.slug, endpoint_id=found.pk)
