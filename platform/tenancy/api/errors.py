"""The management API's exception handler: the platform's errors (tenancy.errors) rendered as
everywhere, DRF's own in the same OpenAI shape (+ `details` for field-by-field validation)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from tenancy.errors import ServiceError, error_body, render


def _first_message(detail) -> tuple[str, str | None]:
    """The first human message in a DRF validation tree, and the field it belongs to."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            message, _ = _first_message(value)
            return (message if field == "non_field_errors" else f"{field}: {message}"), (
                None if field == "non_field_errors" else field
            )
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail), None


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body, status_code, headers = render(exc)
        return Response(body, status=status_code, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handling logs it
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, exceptions.ValidationError):
        message, param = _first_message(exc.detail)
        body = error_body(message, status_code=400, code="invalid_value", param=param, details=exc.detail)
        return Response(body, status=status.HTTP_400_BAD_REQUEST, headers=headers)
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else None
    body = error_body(
        str(exc.detail), status_code=exc.status_code, code=code, error_type=getattr(exc, "error_type", None)
    )
    return Response(body, status=exc.status_code, headers=headers)
