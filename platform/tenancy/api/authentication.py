"""DRF authentication by API key: `Authorization: Bearer sk-...`."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from tenancy import keyauth


class KeyRejectedError(exceptions.APIException):
    def __init__(self, rejected: keyauth.KeyRejected):
        super().__init__(detail=rejected.message, code=rejected.code)
        self.status_code = rejected.status
        self.error_type = rejected.error_type


class APIKeyAuthentication(authentication.BaseAuthentication):
    """`request.user` is anonymous and `request.auth` is the KeyPrincipal: a key is not a person."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        token = keyauth.bearer_token(header)
        try:
            principal = keyauth.authenticate(token)
        except keyauth.KeyRejected as rejected:
            raise KeyRejectedError(rejected) from None
        return (AnonymousUser(), principal)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class APIKeyScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key, `sk-...`."}
