"""The dashboard, the model catalog, members and the audit log."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing import budgets
from billing import selectors as billing_selectors
from catalog import selectors as catalog
from fine_tuning import selectors as fine_tuning_selectors
from frontend.forms import (
    InviteForm,
    RoleForm,
)
from frontend.views.access import nav_context, org_page
from serving import selectors as serving
from tenancy import selectors, services
from tenancy.audit import Actor
from tenancy.models import Invitation, Membership
from tenancy.roles import Permission as P


@org_page(P.ORG_VIEW)
def org_overview(request, access):
    """The dashboard: today's requests, tokens and spend, the credit balance, jobs in progress, and
    the endpoints with their health."""
    organization_id = access.organization.pk
    context = nav_context(
        access,
        "overview",
        models=list(catalog.visible_base_models(organization_id)),
        base_url=request.build_absolute_uri("/v1"),
        today=billing_selectors.today(organization_id) if access.can(P.BILLING_VIEW) else None,
        account=budgets.ensure_account(organization_id) if access.can(P.BILLING_VIEW) else None,
        jobs=fine_tuning_selectors.jobs_of(organization_id, active_only=True),
        endpoints=list(serving.live_endpoints(organization_id)),
    )
    return render(request, "frontend/org_overview.html", context)


@org_page(P.ORG_VIEW)
def models(request, access):
    """The catalog: base models with context length and fine-tunability, the organization's own
    fine-tuned models, and what each costs this organization."""
    organization_id = access.organization.pk
    prices = {row["model"]: row for row in billing_selectors.price_list(organization_id)}
    context = nav_context(
        access,
        "models",
        base_models=list(catalog.visible_base_models(organization_id)),
        tuned_models=list(catalog.fine_tuned_models(organization_id).select_related("base_model")),
        prices=prices,
        currency=settings.BILLING_CURRENCY,
    )
    return render(request, "frontend/models.html", context)


@org_page(P.ORG_VIEW)
def members(request, access):
    form = InviteForm(request.POST or None)
    invite_url = None
    if request.method == "POST":
        if not access.can(P.MEMBERS_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        if form.is_valid():
            try:
                issued = services.invite(
                    organization_id=access.organization.pk,
                    actor_role=access.role,
                    actor=Actor.from_request(request),
                    **form.cleaned_data,
                )
                invite_url = request.build_absolute_uri(reverse("frontend:accept_invitation", args=[issued.token]))
                form = InviteForm()
            except services.ServiceError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
    context = nav_context(
        access,
        "members",
        form=form,
        invite_url=invite_url,
        role_form=RoleForm(),
        members=Membership.objects.select_related("user").order_by("user__email"),
        invitations=Invitation.objects.filter(accepted_at=None, revoked_at=None)
        if access.can(P.MEMBERS_MANAGE)
        else [],
    )
    return render(request, "frontend/members.html", context)


@org_page(P.MEMBERS_MANAGE, model=Membership)
@require_POST
def change_member(request, access, member_id):
    member = Membership.objects.filter(pk=member_id).first()
    if member is None:
        raise Http404("No such member")
    try:
        if request.POST.get("remove"):
            services.remove_member(
                member.pk,
                organization_id=access.organization.pk,
                actor_role=access.role,
                actor=Actor.from_request(request),
            )
            messages.success(request, "Member removed.")
        else:
            form = RoleForm(request.POST)
            if form.is_valid():
                services.change_role(
                    member.pk,
                    organization_id=access.organization.pk,
                    role=form.cleaned_data["role"],
                    actor_role=access.role,
                    actor=Actor.from_request(request),
                )
                messages.success(request, "Role changed.")
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("frontend:members", org=access.organization.slug)


AUDIT_LAST_PAGE = 10**6  # a page past it would be an offset the database cannot hold; nothing is there anyway
AUDIT_PAGE = 50


@org_page(P.AUDIT_VIEW)
def audit_log(request, access):
    """Who did what, newest first, 50 a page; filter by action prefix (e.g. `key.` or `endpoint.`)."""
    action = request.GET.get("action", "").strip()[:64]
    rows = selectors.audit_entries(access.organization.pk, action_prefix=action)
    try:
        page = min(max(1, int(request.GET.get("page", "1"))), AUDIT_LAST_PAGE)
    except ValueError:
        page = 1
    entries = list(rows[(page - 1) * AUDIT_PAGE : page * AUDIT_PAGE + 1])
    context = nav_context(
        access,
        "audit",
        entries=entries[:AUDIT_PAGE],
        action=action,
        page=page,
        has_next=len(entries) > AUDIT_PAGE,
    )
    return render(request, "frontend/audit.html", context)
