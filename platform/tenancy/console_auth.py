"""The console's own calls to the gateway (the playground): the signed-in member's session stands
for their console key (tenancy.services.console_key), so no secret is ever put in a page.

The gateway takes this path only for a request without an Authorization header that names the
organization in X-Console-Organization; it also checks Django's CSRF token (sent by the page in
X-CSRFToken), so another site cannot make a member's browser spend their organization's money.
"""

from __future__ import annotations

from tenancy import keyauth, selectors, services
from tenancy.keyauth import KeyPrincipal, KeyRejected
from tenancy.roles import Permission

HEADER = "X-Console-Organization"


def session_principal(user, organization_slug: str) -> KeyPrincipal:
    access = selectors.access_by_membership(user, organization_slug)
    if access is None:
        raise KeyRejected(
            403,
            "not_a_member",
            f"Your account is not a member of an organization '{organization_slug}'.",
            error_type="permission_error",
        )
    if not access.can(Permission.MODELS_USE):
        raise KeyRejected(
            403,
            "insufficient_role",
            f"Your role ({access.role}) may not call models in '{organization_slug}'.",
            error_type="permission_error",
        )
    key = services.console_key(organization_id=access.organization.pk, user_id=user.pk)
    principal = KeyPrincipal.from_row(key, access.organization)
    keyauth.check(principal)
    return principal
