from rest_framework.permissions import BasePermission

from tenancy.keyauth import KeyPrincipal


class SignedInOrKey(BasePermission):
    """A signed-in person, or a request authenticated by an API key (which is not a person)."""

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, KeyPrincipal) or bool(request.user and request.user.is_authenticated)


class SessionOnly(BasePermission):
    message = "This endpoint needs a signed-in user, not an API key."

    def has_permission(self, request, view) -> bool:
        return not isinstance(request.auth, KeyPrincipal) and bool(request.user and request.user.is_authenticated)
