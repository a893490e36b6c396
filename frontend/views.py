"""Console pages. Thin: they resolve the organization like the API does, then call services."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.http import Http404, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import budgets, paying
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import Invoice, Notification
from catalog import selectors as catalog
from compute import selectors as compute_selectors
from fine_tuning import jobs as fine_tuning_jobs
from fine_tuning import selectors as fine_tuning_selectors
from fine_tuning import services as fine_tuning_services
from fine_tuning.models import File, FineTuningJob
from fine_tuning.uploads import HashingUploadHandler
from frontend.forms import (
    EndpointForm,
    FineTuneForm,
    InviteForm,
    NewKeyForm,
    RoleForm,
    SignInForm,
    SignUpForm,
    UploadForm,
)
from serving import endpoint_metrics, endpoints
from serving import selectors as serving
from serving.models import Endpoint
from tenancy import console_auth, scope, selectors, services, throttle
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


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset (signed one-time links; the same answer whether or not the address has an
    account), throttled: too many requests from one client get 429; past a few mails to one
    account in the window, the page answers as usual and sends nothing more."""

    template_name = "frontend/password_reset.html"
    email_template_name = "frontend/password_reset_email.txt"
    subject_template_name = "frontend/password_reset_subject.txt"
    success_url = reverse_lazy("frontend:password_reset_sent")

    def form_valid(self, form):
        wait, may_send = throttle.password_reset_allowed(client_ip(self.request), form.cleaned_data["email"])
        if wait:
            return _too_many(self.request, self.template_name, self.get_context_data(form=form), wait)
        if not may_send:
            return redirect(self.success_url)
        return super().form_valid(form)


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
        "switcher": selectors.memberships_of_user(access.user_id) if access.user_id else [],
        **extra,
    }


@org_page(P.ORG_VIEW)
def org_overview(request, access):
    """The dashboard: today's requests, tokens and spend, the credit balance, jobs in progress, and
    the endpoints with their health."""
    organization_id = access.organization.pk
    context = _nav(
        access,
        "overview",
        models=list(catalog.visible_base_models(organization_id)),
        base_url=request.build_absolute_uri("/v1"),
        today=billing_selectors.today(organization_id) if access.can(P.BILLING_VIEW) else None,
        account=budgets.ensure_account(organization_id) if access.can(P.BILLING_VIEW) else None,
        jobs=fine_tuning_selectors.active_jobs(organization_id),
        endpoints=list(serving.live_endpoints(organization_id)),
    )
    return render(request, "frontend/org_overview.html", context)


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
        _nav(access, "keys", form=form, keys=rows, issued=issued, limits=limits, currency=settings.BILLING_CURRENCY),
    )
    if issued:
        response["Cache-Control"] = "no-store"
    return response


@org_page(P.KEYS_OWN, model=APIKey)
@require_POST
def revoke_key(request, access, key_id):
    key = selectors.visible_keys(access).filter(pk=key_id).first()
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
    """Balance, limit, card and top-ups (owners change them), invoices and notices."""
    organization_id = access.organization.pk
    if request.method == "POST":
        if not access.can(P.BILLING_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        _billing_change(request, organization_id)
        return redirect("frontend:billing", org=access.organization.slug)
    context = _nav(
        access,
        "billing",
        account=budgets.ensure_account(organization_id),
        card=billing_selectors.saved_card(organization_id),
        invoices=Invoice.objects.all()[:24],
        notifications=Notification.objects.all()[:10],
        payments=billing_selectors.recent_payments(organization_id),
        currency=settings.BILLING_CURRENCY.upper(),
        can_manage=access.can(P.BILLING_MANAGE),
    )
    return render(request, "frontend/billing.html", context)


def _billing_change(request, organization_id: int) -> None:
    """One of the billing page's owner forms; the outcome is a message on the page it returns to."""
    actor = Actor.from_request(request)
    action = request.POST.get("action")
    try:
        if action == "limit":
            raw = request.POST.get("monthly_limit", "").strip()
            billing_services.configure_account(organization_id, monthly_limit=raw or None, actor=actor)
            messages.success(request, f"Monthly limit {'set to ' + raw if raw else 'removed'}.")
        elif action == "card":
            saved = paying.save_card(organization_id, request.POST.get("payment_method", "").strip(), actor=actor)
            messages.success(request, f"Card {saved.card_brand} ending {saved.card_last4} saved.")
        elif action == "top_up":
            payment = paying.top_up(organization_id, request.POST.get("amount", "").strip(), actor=actor)
            if payment.status == "succeeded":
                messages.success(request, "Credit added.")
            else:
                messages.error(request, f"The top-up is {payment.status}: {payment.failure_message or 'see payments'}.")
        else:
            messages.error(request, "Unknown change.")
    except services.ServiceError as exc:
        messages.error(request, exc.message)


@org_page(P.BILLING_VIEW, model=Invoice, allow_suspended=True)
def invoice(request, access, invoice_id: int):
    found = Invoice.objects.filter(pk=invoice_id).prefetch_related("lines").first()
    if found is None:
        raise Http404("No such invoice")
    return render(request, "frontend/invoice.html", _nav(access, "billing", invoice=found))


@org_page(P.ORG_VIEW)
def models(request, access):
    """The catalog: base models with context length and fine-tunability, the organization's own
    fine-tuned models, and what each costs this organization."""
    organization_id = access.organization.pk
    prices = {row["model"]: row for row in billing_selectors.price_list(organization_id)}
    context = _nav(
        access,
        "models",
        base_models=list(catalog.visible_base_models(organization_id)),
        tuned_models=list(catalog.fine_tuned_models(organization_id).select_related("base_model")),
        prices=prices,
        currency=settings.BILLING_CURRENCY,
    )
    return render(request, "frontend/models.html", context)


def _endpoint_form(access, data=None) -> EndpointForm:
    organization_id = access.organization.pk
    choices = [m.pk for m in catalog.visible_base_models(organization_id)]
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
    context = _nav(access, "endpoints", endpoints=list(serving.live_endpoints(access.organization.pk)), form=form)
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
    context = _nav(
        access,
        "endpoints",
        endpoint=found,
        metrics=endpoint_metrics.metrics(organization_id, found.pk),
        chart=chart,
        base_url=request.build_absolute_uri("/v1"),
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


@org_page(P.MODELS_USE)
def playground(request, access):
    """Chat with any model or ready endpoint of the organization. The page calls the gateway itself
    (/v1/chat/completions, streamed), as the member's console key: the session stands for it."""
    organization_id = access.organization.pk
    choices = [m.pk for m in catalog.visible_base_models(organization_id)]
    choices += [m.pk for m in catalog.fine_tuned_models(organization_id)]
    ready = [e for e in serving.live_endpoints(organization_id) if e.status == Endpoint.Status.READY]
    context = _nav(
        access,
        "playground",
        models=choices,
        endpoints=ready,
        chosen=request.GET.get("model", ""),
        console_header=console_auth.HEADER,
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


AUDIT_PAGE = 50


@org_page(P.AUDIT_VIEW)
def audit_log(request, access):
    """Who did what, newest first, 50 a page; filter by action prefix (e.g. `key.` or `endpoint.`)."""
    action = request.GET.get("action", "").strip()[:64]
    rows = selectors.audit_entries(access.organization.pk, action_prefix=action)
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    entries = list(rows[(page - 1) * AUDIT_PAGE : page * AUDIT_PAGE + 1])
    context = _nav(
        access,
        "audit",
        entries=entries[:AUDIT_PAGE],
        action=action,
        page=page,
        has_next=len(entries) > AUDIT_PAGE,
    )
    return render(request, "frontend/audit.html", context)


def _hashed_upload(request):
    """The uploaded file, received as the files API receives it (straight to disk, hashed,
    cut off past FILE_UPLOAD_MAX_BYTES), or an error message."""
    handler = HashingUploadHandler(request, settings.FILE_UPLOAD_MAX_BYTES)
    request.upload_handlers = [handler]
    uploaded = request.FILES.get("file")
    if handler.too_large:
        return None, f"The file is too large: the limit is {settings.FILE_UPLOAD_MAX_BYTES // (1 << 20)} MB."
    if uploaded is None or not hasattr(uploaded, "sha256"):
        return None, "Choose a .jsonl file to upload."
    return uploaded, None


@csrf_exempt  # the upload handlers must be set before the body is read; CSRF is checked right after
@org_page(P.JOBS_VIEW)
def data_page(request, access):
    """Training files: upload (with progress), and each file's validation status."""
    error = None
    if request.method == "POST":
        if not access.can(P.JOBS_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        uploaded, error = _hashed_upload(request)
        refused = CsrfViewMiddleware(lambda _: None).process_view(request, None, (), {})
        if refused is not None:
            return refused
        if uploaded is not None:
            try:
                row = fine_tuning_services.upload_file(
                    organization_id=access.organization.pk,
                    uploaded=uploaded,
                    purpose="fine-tune",
                    actor=Actor.from_request(request),
                )
            except services.ServiceError as exc:
                error = exc.message
            else:
                target = reverse("frontend:data_file", args=[access.organization.slug, row.pk])
                if request.headers.get("X-Requested-With") == "upload":
                    return JsonResponse({"redirect": target})
                return redirect(target)
        if request.headers.get("X-Requested-With") == "upload":
            return JsonResponse({"error": error}, status=400)
    context = _nav(
        access,
        "data",
        files=list(fine_tuning_selectors.files(access.organization.pk)[:200]),
        datasets=fine_tuning_selectors.datasets(access.organization.pk),
        form=UploadForm(),
        error=error,
        can_manage=access.can(P.JOBS_MANAGE),
    )
    return render(request, "frontend/data.html", context, status=400 if error else 200)


@org_page(P.JOBS_VIEW, model=File)
def data_file(request, access, file_id: str):
    found = fine_tuning_selectors.file(access.organization.pk, file_id)
    if found is None:
        raise Http404("No such file")
    if request.method == "POST":
        if not access.can(P.JOBS_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        _add_version(request, access.organization.pk, found)
        return redirect("frontend:data_file", org=access.organization.slug, file_id=found.pk)
    context = _nav(
        access,
        "data",
        file=found,
        report=found.report or {},
        datasets=fine_tuning_selectors.datasets(access.organization.pk),
        versions=list(found.dataset_versions.select_related("dataset").order_by("dataset__name", "number")),
    )
    template = "frontend/data_file_status.html" if request.htmx else "frontend/data_file.html"
    return render(request, template, context)


def _add_version(request, organization_id: int, found: File) -> None:
    """The file becomes the next version of a dataset, which is made if it does not exist yet."""
    name = request.POST.get("dataset", "").strip()
    actor = Actor.from_request(request)
    try:
        with transaction.atomic():
            dataset = next((d for d in fine_tuning_selectors.datasets(organization_id) if d.name == name), None)
            if dataset is None:
                dataset = fine_tuning_services.create_dataset(organization_id=organization_id, name=name, actor=actor)
            version = fine_tuning_services.add_dataset_version(
                dataset.pk,
                organization_id=organization_id,
                file_id=found.pk,
                note=request.POST.get("note", "").strip()[:500],
                actor=actor,
            )
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Added as version {version.number} of {dataset.name}.")


def _fine_tune_form(access, data=None, initial_file: str | None = None) -> FineTuneForm:
    organization_id = access.organization.pk
    tunable = [m.pk for m in catalog.visible_base_models(organization_id) if m.fine_tunable]
    ready = [
        (f.pk, f"{f.filename} ({f.pk}, {f.report.get('examples', 0)} examples)")
        for f in fine_tuning_selectors.files(organization_id).filter(status=File.Status.PROCESSED)[:200]
    ]
    return FineTuneForm(data, models=tunable, files=ready, initial={"training_file": initial_file})


def _form_error(form, exc) -> None:
    param = (exc.param or "").removeprefix("hyperparameters.")
    form.add_error(param if param in form.fields else None, exc.message)


@org_page(P.JOBS_VIEW)
def fine_tuning_page(request, access):
    can_manage = access.can(P.JOBS_MANAGE)
    chosen = request.GET.get("training_file")
    form = _fine_tune_form(access, request.POST or None, chosen) if can_manage else None
    if request.method == "POST":
        if not can_manage:
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = fine_tuning_jobs.create(
                    organization_id=access.organization.pk,
                    model=data["model"],
                    training_file=data["training_file"],
                    validation_file=data["validation_file"] or None,
                    hyperparameters=form.hyperparameters(),
                    suffix=data["suffix"] or None,
                    actor=Actor.from_request(request),
                )
            except services.ServiceError as exc:
                _form_error(form, exc)
            else:
                return redirect("frontend:job", org=access.organization.slug, job_id=job.pk)
    context = _nav(
        access,
        "fine_tuning",
        jobs=fine_tuning_selectors.jobs_of(access.organization.pk),
        form=form,
        capacity=compute_selectors.training_capacity(),
    )
    return render(request, "frontend/fine_tuning.html", context)


@org_page(P.JOBS_MANAGE)
@require_POST
def fine_tuning_estimate(request, access):
    """The form's estimate before launch (an htmx fragment): "auto" made concrete, tokens, cost, time."""
    form = _fine_tune_form(access, request.POST)
    estimate, error = None, None
    if form.is_valid():
        try:
            estimate = fine_tuning_jobs.estimate(
                organization_id=access.organization.pk,
                model=form.cleaned_data["model"],
                training_file=form.cleaned_data["training_file"],
                hyperparameters=form.hyperparameters(),
            )
        except services.ServiceError as exc:
            error = exc.message
    else:
        error = " ".join(f"{form[name].label}: {' '.join(errs)}" for name, errs in form.errors.items())
    return render(request, "frontend/fine_tuning_estimate.html", {"estimate": estimate, "error": error})


@org_page(P.JOBS_VIEW, model=FineTuningJob)
def job_page(request, access, job_id: str):
    found = fine_tuning_selectors.job(access.organization.pk, job_id)
    if found is None:
        raise Http404("No such job")
    context = _nav(
        access,
        "fine_tuning",
        job=found,
        chart=fine_tuning_selectors.loss_curve(found),
        events=list(found.events.order_by("-created_at")[:50]),
        checkpoints=list(found.checkpoints.order_by("step_number")),
        running=found.status not in FineTuningJob.FINISHED,
    )
    template = "frontend/job_live.html" if request.htmx else "frontend/job.html"
    return render(request, template, context)


@org_page(P.JOBS_MANAGE, model=FineTuningJob)
@require_POST
def job_action(request, access, job_id: str, verb: str):
    change = {"cancel": fine_tuning_jobs.cancel, "pause": fine_tuning_jobs.pause, "resume": fine_tuning_jobs.resume}
    if verb not in change or fine_tuning_selectors.job(access.organization.pk, job_id) is None:
        raise Http404("No such job or action")
    try:
        change[verb](job_id, organization_id=access.organization.pk, actor=Actor.from_request(request))
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("frontend:job", org=access.organization.slug, job_id=job_id)


@org_page(P.BILLING_VIEW, allow_suspended=True)
def usage(request, access):
    """Spend per day and model over 30 days, totals by model and by key, and the latest calls."""
    organization_id = access.organization.pk
    overview = billing_selectors.usage_overview(organization_id)
    context = _nav(
        access,
        "usage",
        overview=overview,
        chart=overview["chart"],
        recent=billing_selectors.recent_requests(organization_id),
        account=budgets.ensure_account(organization_id),
        currency=settings.BILLING_CURRENCY.upper(),
    )
    return render(request, "frontend/usage.html", context)


@org_page(P.BILLING_MANAGE, model=APIKey)
@require_POST
def key_limit(request, access, key_id):
    """An owner's monthly spend limit on one key (blank removes it)."""
    key = selectors.visible_keys(access).filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key")
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
