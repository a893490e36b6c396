"""Request plumbing shared by the /v1/ views: key authentication and OpenAI error responses."""

from __future__ import annotations

import functools
from importlib import import_module

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import aget_user
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from tenancy import console_auth, keyauth
from tenancy.detached import returning_connection
from tenancy.errors import ServiceError, render
from tenancy.keyauth import KeyPrincipal


class GatewayError(ServiceError):
    """A /v1 refusal, status first (the platform's error family, tenancy.errors)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: dict | None = None,
        quiet: bool = False,
    ):
        super().__init__(message, code, param, status=status, error_type=error_type, headers=headers)
        self.quiet = quiet


def error_response(error: ServiceError) -> JsonResponse:
    """The gateway's answer to any of the platform's errors."""
    body, status, headers = render(error)
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    if getattr(error, "quiet", False):
        # An expected condition logged by the gateway as a warning: not Django's ERROR line for a 5xx.
        response._has_been_logged = True
    return response


async def _console_principal(request, organization_slug: str) -> KeyPrincipal:
    """A signed-in member's console call (tenancy.console_auth): session and CSRF token checked.
    The gateway's middleware chain has no session or auth middleware (maas.gateway_handler): the
    session is opened here, for these calls only."""
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(
        request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    )
    user = await aget_user(request)
    if not user.is_authenticated:
        raise keyauth.KeyRejected(401, "not_signed_in", "Your console session has ended: sign in again.")
    if CsrfViewMiddleware(lambda _: None).process_view(request, None, (), {}) is not None:
        raise keyauth.KeyRejected(
            403, "csrf_failed", "The console's request lacked a valid CSRF token: reload the page.", "permission_error"
        )
    return await sync_to_async(returning_connection(console_auth.session_principal))(user, organization_slug)


async def authenticate(request, *any_of_scopes: str) -> KeyPrincipal:
    """The request's key principal, if it holds one of the scopes; else a GatewayError."""
    token = keyauth.bearer_token(request.headers.get("Authorization"))
    console_organization = request.headers.get(console_auth.HEADER)
    try:
        if token is None and console_organization:
            principal = await _console_principal(request, console_organization)
        else:
            principal = await keyauth.aauthenticate(token)
    except keyauth.KeyRejected as rejected:
        headers = {"WWW-Authenticate": 'Bearer realm="api"'} if rejected.status == 401 else None
        raise GatewayError(
            rejected.status, rejected.message, code=rejected.code, error_type=rejected.error_type, headers=headers
        ) from None
    if any_of_scopes and not any(principal.allows(s) for s in any_of_scopes):
        raise GatewayError(
            403,
            f"This API key lacks the scope for this call; it needs one of: {', '.join(any_of_scopes)}.",
            code="insufficient_scope",
            error_type="permission_error",
        )
    return principal


def gateway_view(*methods: str):
    """An async /v1/ view: no CSRF (keys, not cookies), allowed methods, any of the platform's errors
    (a service's, say, refusing a suspended organization's console key) → its OpenAI error."""

    def decorate(view):
        @functools.wraps(view)
        async def wrapped(request, *args, **kwargs):
            try:
                if methods and request.method not in methods:
                    raise GatewayError(
                        405,
                        f"{request.method} is not allowed here; use {', '.join(methods)}.",
                        code="method_not_allowed",
                        headers={"Allow": ", ".join(methods)},
                    )
                return await view(request, *args, **kwargs)
            except ServiceError as error:
                return error_response(error)

        return csrf_exempt(wrapped)

    return decorate
