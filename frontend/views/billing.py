"""Usage and billing: spend, limits, card and top-ups, invoices."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render

from billing import budgets, paying
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import Invoice, Notification
from frontend.views.access import nav_context, org_page
from tenancy import services
from tenancy.audit import Actor
from tenancy.roles import Permission as P


@org_page(P.BILLING_VIEW, allow_suspended=True)
def billing(request, access):
    """Balance, limit, card and top-ups (owners change them), invoices and notices."""
    organization_id = access.organization.pk
    if request.method == "POST":
        if not access.can(P.BILLING_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        _billing_change(request, organization_id)
        return redirect("frontend:billing", org=access.organization.slug)
    context = nav_context(
        access,
        "billing",
        account=budgets.ensure_account(organization_id),
        card=billing_selectors.saved_card(organization_id),
        invoices=Invoice.objects.all()[:24],
        notifications=Notification.objects.all()[:10],
        payments=billing_selectors.recent_payments(organization_id),
        currency=settings.BILLING_CURRENCY.upper(),
        can_manage=access.can(P.BILLING_MANAGE),
        idempotency_key=uuid.uuid4().hex,  # one per rendered form: submitting it twice charges once
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
            payment = paying.top_up(
                organization_id,
                request.POST.get("amount", "").strip(),
                actor=actor,
                idempotency_key=request.POST.get("idempotency_key", ""),
            )
            if payment.status == "succeeded":
                messages.success(request, "Credit added.")
            elif payment.status == "failed":
                why = (payment.failure_message or "see Payments").rstrip(".")
                messages.error(request, f"The top-up failed: {why}.")
            else:
                messages.info(request, "The top-up is being processed; the credit is added when the card is charged.")
        else:
            messages.error(request, "Unknown change.")
    except services.ServiceError as exc:
        messages.error(request, exc.message)


@org_page(P.BILLING_VIEW, model=Invoice, allow_suspended=True)
def invoice(request, access, invoice_id: int):
    found = Invoice.objects.filter(pk=invoice_id).prefetch_related("lines").first()
    if found is None:
        raise Http404("No such invoice")
    return render(request, "frontend/invoice.html", nav_context(access, "billing", invoice=found))


@org_page(P.BILLING_VIEW, allow_suspended=True)
def usage(request, access):
    """Spend per day and model over 30 days, totals by model and by key, and the latest calls."""
    organization_id = access.organization.pk
    overview = billing_selectors.usage_overview(organization_id)
    context = nav_context(
        access,
        "usage",
        overview=overview,
        chart=overview["chart"],
        recent=billing_selectors.recent_requests(organization_id),
        account=budgets.ensure_account(organization_id),
        currency=settings.BILLING_CURRENCY.upper(),
    )
    return render(request, "frontend/usage.html", context)
