"""The payment provider's webhook: POST /billing/webhooks/<provider>/, verified on the raw body
(no session, no CSRF token: the signature is the authentication)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import paying
from billing.payments.types import InvalidSignature
from tenancy.errors import error_body


@csrf_exempt
@require_POST
def receive(request, provider: str):
    try:
        status, message = paying.receive_webhook(provider, request.body, request.headers.get("Stripe-Signature"))
    except InvalidSignature:
        return JsonResponse(
            error_body("The webhook signature does not verify.", status_code=400, code="invalid_signature"), status=400
        )
    if status == 404:
        return JsonResponse(error_body(message, status_code=404), status=404)
    return JsonResponse({"received": status == 200, "message": message}, status=status)
