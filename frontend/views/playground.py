"""The playground (the page itself calls the gateway as the member's console key)."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render

from billing import selectors as billing_selectors
from catalog import selectors as catalog
from frontend.views.access import nav_context, org_page
from serving import selectors as serving
from serving.models import Endpoint
from tenancy import console_auth, services
from tenancy.roles import Permission as P


@org_page(P.MODELS_USE)
def playground(request, access):
    """Chat with any model or ready endpoint of the organization, and compare texts with an
    embedding model. The page calls the gateway itself (/v1/chat/completions, streamed, and
    /v1/embeddings), as the member's console key: the session stands for it."""
    organization_id = access.organization.pk
    choices = [m.pk for m in catalog.visible_base_models(organization_id).filter(kind="chat")]
    choices += [m.pk for m in catalog.fine_tuned_models(organization_id)]
    ready = [e for e in serving.live_endpoints(organization_id) if e.status == Endpoint.Status.READY]
    context = nav_context(
        access,
        "playground",
        models=choices,
        endpoints=ready,
        chosen=request.GET.get("model", ""),
        console_header=console_auth.HEADER,
        embedding_models=[m.pk for m in catalog.visible_base_models(organization_id).filter(kind="embedding")],
    )
    return render(request, "frontend/playground.html", context)


@org_page(P.MODELS_USE)
def playground_usage(request, access, request_id: str):
    """A playground reply's usage and cost, from the ledger (202 until it has landed)."""
    key = services.console_key(organization_id=access.organization.pk, user_id=request.user.pk)
    found = billing_selectors.request_usage(access.organization.pk, request_id, api_key_id=key.pk)
    if found is None:  # not in the ledger yet (it lands within moments): the page asks again
        return JsonResponse({"pending": True}, status=202)
    return JsonResponse(found)
