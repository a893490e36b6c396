"""The one base viewset for organization-owned resources.

It resolves the organization (from the URL for a signed-in person, from the key for an API key),
refuses another organization's URL with 404 (never 403: no hint that it exists), enters the
organization scope for the whole request, checks the role or key permission per action, and owns
`get_queryset`/`get_object`. Subclasses declare `model` and `permissions`, nothing else about
tenancy.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, viewsets
from rest_framework.permissions import BasePermission

from tenancy import scope, selectors
from tenancy.api.authentication import APIKeyAuthentication
from tenancy.audit import Actor
from tenancy.keyauth import KeyPrincipal
from tenancy.roles import Permission

ORG_PARAMETER = OpenApiParameter("org", str, OpenApiParameter.PATH, description="The organization's slug.")


class OrganizationSuspended(exceptions.PermissionDenied):
    default_code = "organization_suspended"


def resolve_access(request, slug: str, *, allow_suspended: bool = False) -> selectors.OrgAccess:
    principal = request.auth if isinstance(request.auth, KeyPrincipal) else None
    if principal is not None:
        access = selectors.access_by_key(principal, slug)
    else:
        access = selectors.access_by_membership(request.user, slug)
    if access is None:
        raise exceptions.NotFound("No such organization.")
    if not access.organization.is_active and not allow_suspended:
        reason = f" Reason: {access.organization.suspended_reason}." if access.organization.suspended_reason else ""
        raise OrganizationSuspended(f"Organization '{slug}' is suspended.{reason} Contact the platform administrator.")
    return access


class _ScopedRequest:
    """What both bases share: the organization scope entered by `initial` is left when the request
    ends, whatever happens, and the queryset comes from the scoped default manager."""

    model = None
    _scope_token = None

    def enter_scope(self, organization_id: int) -> None:
        self._scope_token = scope.enter(organization_id)

    def dispatch(self, request, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            if self._scope_token is not None:
                scope.leave(self._scope_token)
                self._scope_token = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request, no scope
            return self.model.all_orgs.none()
        # The default manager is scoped: outside the organization scope this raises.
        return self.model.objects.all()

    @property
    def actor(self) -> Actor:
        return Actor.from_request(self.request)


class OrgScopedMixin(_ScopedRequest):
    """Mixed into DRF generic views. `permissions` maps an action (or `*`) to a Permission."""

    permissions: dict[str, Permission] = {}
    lookup_value_regex = "[^/]+"
    # A suspended organization is refused everything, except views that set this: those that let
    # it see why and pay what it owes.
    allow_suspended = False

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authenticates: 401 before anything org-related
        self.access = resolve_access(request, kwargs["org"], allow_suspended=self.allow_suspended)
        self.organization = self.access.organization
        self.enter_scope(self.organization.pk)
        if getattr(self, "action", "") is None:  # a viewset route that does not map this method
            raise exceptions.MethodNotAllowed(request.method)
        needed = self.permissions.get(
            getattr(self, "action", None) or request.method.lower(), self.permissions.get("*")
        )
        if needed is None or not self.access.can(needed):
            raise exceptions.PermissionDenied("Your role or key does not allow this action in this organization.")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["organization"] = getattr(self, "organization", None)
        return context


class OrgScopedViewSet(OrgScopedMixin, viewsets.GenericViewSet):
    pass


class KeyOnly(BasePermission):
    message = "This endpoint takes an API key: send 'Authorization: Bearer sk-...'."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, KeyPrincipal)


class KeyScopedMixin(_ScopedRequest):
    """For the OpenAI-compatible resources under /v1/: the organization is the API key's, and the
    key must hold `required_scope`."""

    required_scope: str = ""
    authentication_classes = [APIKeyAuthentication]
    permission_classes = [KeyOnly]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        principal: KeyPrincipal = request.auth
        if self.required_scope and not principal.allows(self.required_scope):
            raise InsufficientScope(f"This API key lacks the '{self.required_scope}' scope.")
        self.principal = principal
        self.enter_scope(principal.organization_id)


class InsufficientScope(exceptions.PermissionDenied):
    default_code = "insufficient_scope"
