"""Console pages. Thin: they resolve the organization like the API does, then call services."""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing import budgets
from billing.models import Invoice, Notification
from catalog import selectors as catalog
from frontend.forms import InviteForm, NewKeyForm, RoleForm, SignInForm, SignUpForm
from tenancy import scope, selectors, services, throttle
from tenancy.audit import Actor, client_ip
from tenancy.models import APIKey, Invitation, Membership
from tenancy.roles import Permission as P


def _too_many(request, template: str, context: dict, wait: int):
    message = f"Too many attempts from here. Try again in {max(1, wait // 60)} minutes."
    response = render(request, template, {**context, "throttled": message}, status=429)
    response["Retry-After"] = str(wait)
    return response


class SignInView(LoginView):
    """Django's sign-in, throttled per client IP and per account (tenancy.throttle)."""

    template_name = "frontend/sign_in.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        ip, email = client_ip(request), request.POST.get("username", "")[:254]
        wait = throttle.sign_in_blocked(ip, email)
        if wait:
            return _too_many(request, self.template_name, self.get_context_data(form=self.get_form()), wait)
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            throttle.sign_in_succeeded(email)
        else:
            throttle.sign_in_failed(ip, email)
        return response


def sign_up(request):
    if request.user.is_authenticated:
        return redirect("frontend:home")
    invitation_token = request.POST.get("invitation") or request.GET.get("invitation") or ""
    invitation = selectors.invitation_by_token(invitation_token) if invitation_token else None
    initial = {"email": invitation.email} if invitation is not None else None
    form = SignUpForm(request.POST or None, initial=initial)
    context = {"form": form, "invitation": invitation, "invitation_token": invitation_token}
    context["mode"] = settings.SIGN_UP_MODE
    if request.method == "POST":
        wait = throttle.sign_up_allowed(client_ip(request))
        if wait:
            return _too_many(request, "frontend/sign_up.html", context, wait)
    if request.method == "POST" and form.is_valid():
        try:
            user, org = services.sign_up(
                actor=Actor.from_request(request), invitation_token=invitation_token, **form.cleaned_data
            )
        except services.ServiceError as exc:
            form.add_error(exc.param if exc.param in form.fields else None, exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("frontend:org", org=org.slug)
    return render(request, "frontend/sign_up.html", context)


@login_required
def home(request):
    memberships = selectors.memberships_of_user(request.user)
    if len(memberships) == 1:
        return redirect("frontend:org", org=memberships[0].organization.slug)
    return render(request, "frontend/home.html", {"memberships": memberships})


def org_page(permission: P, model=None, *, allow_suspended: bool = False):
    """Resolve the organization from the URL (404 unless a member), check the role, enter the scope.
    `model` names the tenant-owned model whose id the URL carries (the isolation test reads it).
    `allow_suspended`: the page stays open to a suspended organization (billing: to see why, and pay)."""

    def decorate(view):
        @functools.wraps(view)
        @login_required
        def wrapped(request, org, *args, **kwargs):
            access = selectors.access_by_membership(request.user, org)
            if access is None:
                raise Http404("No such organization")
            if not access.organization.is_active and not allow_suspended:
                return render(request, "frontend/suspended.html", {"organization": access.organization}, status=403)
            if not access.can(permission):
                return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
            with scope.organization(access.organization.pk):
                return view(request, access, *args, **kwargs)

        wrapped.model = model
        return wrapped

    return decorate


def _nav(access, active: str, **extra):
    return {
        "access": access,
        "organization": access.organization,
        "active": active,
        "P": {p.name: p.value for p in P},
        **extra,
    }


@org_page(P.ORG_VIEW)
def org_overview(request, access):
    models = list(catalog.visible_base_models(access.organization.pk))
    base_url = request.build_absolute_uri("/v1")
    return render(request, "frontend/org_overview.html", _nav(access, "overview", models=models, base_url=base_url))


@org_page(P.KEYS_OWN)
def keys(request, access):
    form = NewKeyForm(request.POST or None)
    issued = None
    if request.method == "POST" and form.is_valid():
        try:
            issued = services.create_api_key(
                organization_id=access.organization.pk,
                created_by_id=request.user.pk,
                member_only=not access.can(P.KEYS_MANAGE),
                actor=Actor.from_request(request),
                **form.cleaned_data,
            )
            form = NewKeyForm()
        except services.ServiceError as exc:
            form.add_error(exc.param if exc.param in form.fields else None, exc.message)
    rows = APIKey.objects.select_related("created_by")
    if not access.can(P.KEYS_MANAGE):
        rows = rows.filter(created_by=request.user)
    response = render(request, "frontend/keys.html", _nav(access, "keys", form=form, keys=rows, issued=issued))
    if issued:
        response["Cache-Control"] = "no-store"
    return response


@org_page(P.KEYS_OWN, model=APIKey)
@require_POST
def revoke_key(request, access, key_id):
    rows = APIKey.objects.all() if access.can(P.KEYS_MANAGE) else APIKey.objects.filter(created_by=request.user)
    key = rows.filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key")
    services.revoke_api_key(key.pk, organization_id=access.organization.pk, actor=Actor.from_request(request))
    messages.success(request, f"Revoked {key.name} ({key.prefix}…).")
    return redirect("frontend:keys", org=access.organization.slug)


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
    context = _nav(
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


def accept_invitation(request, token):
    """Open to the signed-out too: the page offers to sign in, or to create an account that joins."""
    invitation = selectors.invitation_by_token(token)
    if request.method == "POST" and not request.user.is_authenticated:
        return redirect(f"{reverse('frontend:sign_in')}?next={request.path}")
    if request.method == "POST":
        try:
            membership = services.accept_invitation(token=token, user=request.user, actor=Actor.from_request(request))
        except services.ServiceError as exc:
            messages.error(request, exc.message)
        else:
            return redirect("frontend:org", org=membership.organization.slug)
    return render(request, "frontend/accept_invitation.html", {"invitation": invitation})


@org_page(P.BILLING_VIEW, allow_suspended=True)
def billing(request, access):
    account = budgets.ensure_account(access.organization.pk)
    context = _nav(
        access,
        "billing",
        account=account,
        invoices=Invoice.objects.all()[:24],
        notifications=Notification.objects.all()[:10],
    )
    return render(request, "frontend/billing.html", context)


@org_page(P.BILLING_VIEW, model=Invoice, allow_suspended=True)
def invoice(request, access, invoice_id: int):
    found = Invoice.objects.filter(pk=invoice_id).prefetch_related("lines").first()
    if found is None:
        raise Http404("No such invoice")
    return render(request, "frontend/invoice.html", _nav(access, "billing", invoice=found))
