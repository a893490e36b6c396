"""API keys: created with POST-redirect-GET, revoked, limited."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing import selectors as billing_selectors
from billing import services as billing_services
from frontend.forms import (
    NewKeyForm,
)
from frontend.views.access import nav_context, org_page
from tenancy import selectors, services
from tenancy.audit import Actor
from tenancy.models import APIKey
from tenancy.roles import Permission as P

ISSUED_KEY = "frontend.issued_key"  # session slot: a new key's secret, shown on the next page load only


@org_page(P.KEYS_OWN)
def keys(request, access):
    """POST, then redirect, then GET: reloading the page never creates a second key. The secret
    waits in the server-side session for the one GET that shows it, and is gone from it then."""
    form = NewKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = services.create_api_key(
                organization_id=access.organization.pk,
                created_by_id=request.user.pk,
                member_only=not access.can(P.KEYS_MANAGE),
                actor=Actor.from_request(request),
                **form.cleaned_data,
            )
        except services.ServiceError as exc:
            form.add_error(exc.param if exc.param in form.fields else None, exc.message)
        else:
            request.session[ISSUED_KEY] = {
                "organization": access.organization.pk,
                "name": created.key.name,
                "plaintext": created.plaintext,
            }
            return redirect("frontend:keys", org=access.organization.slug)
    issued = request.session.pop(ISSUED_KEY, None)
    if issued is not None and issued.get("organization") != access.organization.pk:
        issued = None
    rows = selectors.visible_keys(access)
    limits = billing_selectors.key_limits(access.organization.pk) if access.can(P.BILLING_MANAGE) else {}
    response = render(
        request,
        "frontend/keys.html",
        nav_context(
            access, "keys", form=form, keys=rows, issued=issued, limits=limits, currency=settings.BILLING_CURRENCY
        ),
    )
    if issued:
        response["Cache-Control"] = "no-store"
    return response


def _visible_key(access, key_id) -> APIKey:
    key = selectors.visible_keys(access).filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key")
    return key


@org_page(P.KEYS_OWN, model=APIKey)
@require_POST
def revoke_key(request, access, key_id):
    key = _visible_key(access, key_id)
    services.revoke_api_key(key.pk, organization_id=access.organization.pk, actor=Actor.from_request(request))
    messages.success(request, f"Revoked {key.name} ({key.prefix}…).")
    return redirect("frontend:keys", org=access.organization.slug)


@org_page(P.BILLING_MANAGE, model=APIKey)
@require_POST
def key_limit(request, access, key_id):
    """An owner's monthly spend limit on one key (blank removes it)."""
    key = _visible_key(access, key_id)
    raw = request.POST.get("monthly_limit", "").strip()
    try:
        billing_services.set_key_spend_limit(
            access.organization.pk, str(key.pk), raw or None, actor=Actor.from_request(request)
        )
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{key.name}: monthly limit {raw if raw else 'removed'}.")
    return redirect("frontend:keys", org=access.organization.slug)
