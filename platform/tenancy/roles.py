"""Roles and the permission matrix (written once, here; the README renders it).

| permission        | owner | admin | member | viewer |
|-------------------|:-----:|:-----:|:------:|:------:|
| org.view          |   ✓   |   ✓   |   ✓    |   ✓    |
| org.manage        |   ✓   |   ✓   |        |        |
| members.view      |   ✓   |   ✓   |   ✓    |   ✓    |
| members.manage    |   ✓   |   ✓¹  |        |        |
| keys.manage       |   ✓   |   ✓   |        |        |
| keys.own          |   ✓   |   ✓   |   ✓²   |        |
| audit.view        |   ✓   |   ✓   |        |        |
| billing.view      |   ✓   |   ✓   |        |        |
| billing.manage    |   ✓   |       |        |        |
| models.use        |   ✓   |   ✓   |   ✓    |        |
| jobs.view         |   ✓   |   ✓   |   ✓    |   ✓    |
| jobs.manage       |   ✓   |   ✓   |   ✓    |        |
| endpoints.view    |   ✓   |   ✓   |   ✓    |   ✓    |
| endpoints.manage  |   ✓   |   ✓   |        |        |

¹ An admin cannot grant, change or remove the owner role; only an owner can, and the last owner
  of an organization can never be removed or demoted.
² A member creates and revokes only keys of their own, with the scopes of what a member may do:
  never `all`, `billing:read`, `endpoints:write` or `endpoints` (which is read and write).

API keys act with the permissions of their scopes; only `all` reaches the member list. A key dies
with its creator's right to hold it: removing a member revokes the keys they created, and a
demotion revokes those whose scopes the new role could not have granted.
"""

from __future__ import annotations

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Permission(StrEnum):
    ORG_VIEW = "org.view"
    ORG_MANAGE = "org.manage"
    MEMBERS_VIEW = "members.view"
    MEMBERS_MANAGE = "members.manage"
    KEYS_MANAGE = "keys.manage"
    KEYS_OWN = "keys.own"
    AUDIT_VIEW = "audit.view"
    BILLING_VIEW = "billing.view"
    BILLING_MANAGE = "billing.manage"
    MODELS_USE = "models.use"
    JOBS_VIEW = "jobs.view"
    JOBS_MANAGE = "jobs.manage"
    ENDPOINTS_VIEW = "endpoints.view"
    ENDPOINTS_MANAGE = "endpoints.manage"


P = Permission
_VIEWER = {P.ORG_VIEW, P.MEMBERS_VIEW, P.JOBS_VIEW, P.ENDPOINTS_VIEW}
_MEMBER = _VIEWER | {P.KEYS_OWN, P.MODELS_USE, P.JOBS_MANAGE}
_ADMIN = _MEMBER | {
    P.ORG_MANAGE,
    P.MEMBERS_MANAGE,
    P.KEYS_MANAGE,
    P.AUDIT_VIEW,
    P.BILLING_VIEW,
    P.ENDPOINTS_MANAGE,
}
_OWNER = _ADMIN | {P.BILLING_MANAGE}

MATRIX: dict[str, frozenset[Permission]] = {
    Role.OWNER: frozenset(_OWNER),
    Role.ADMIN: frozenset(_ADMIN),
    Role.MEMBER: frozenset(_MEMBER),
    Role.VIEWER: frozenset(_VIEWER),
}

# Roles ordered by power, for "may this actor grant that role" checks.
RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def permissions_of(role: str) -> frozenset[Permission]:
    return MATRIX.get(role, frozenset())


class Scope(StrEnum):
    """What an API key may do. `all` is everything an admin may do, key management included."""

    MODELS_READ = "models:read"
    INFERENCE = "inference"
    FILES = "files"
    FINE_TUNING = "fine_tuning"
    ENDPOINTS_READ = "endpoints:read"
    ENDPOINTS_WRITE = "endpoints:write"
    ENDPOINTS = "endpoints"  # read and write, as keys made before the split have it
    BILLING_READ = "billing:read"
    ALL = "all"


# Scopes a member may put on a key of their own: a scope is grantable only if every permission it
# gives is one the member role has (tests/tenancy check this against MATRIX).
MEMBER_GRANTABLE_SCOPES = frozenset(
    {Scope.MODELS_READ, Scope.INFERENCE, Scope.FILES, Scope.FINE_TUNING, Scope.ENDPOINTS_READ}
)

_SCOPE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Scope.MODELS_READ: frozenset({P.ORG_VIEW}),
    Scope.INFERENCE: frozenset({P.ORG_VIEW, P.MODELS_USE}),
    Scope.FILES: frozenset({P.ORG_VIEW, P.JOBS_VIEW}),
    Scope.FINE_TUNING: frozenset({P.ORG_VIEW, P.JOBS_VIEW, P.JOBS_MANAGE}),
    Scope.ENDPOINTS_READ: frozenset({P.ORG_VIEW, P.ENDPOINTS_VIEW}),
    Scope.ENDPOINTS_WRITE: frozenset({P.ORG_VIEW, P.ENDPOINTS_VIEW, P.ENDPOINTS_MANAGE}),
    Scope.ENDPOINTS: frozenset({P.ORG_VIEW, P.ENDPOINTS_VIEW, P.ENDPOINTS_MANAGE}),
    Scope.BILLING_READ: frozenset({P.ORG_VIEW, P.BILLING_VIEW}),
    Scope.ALL: frozenset(_ADMIN),
}


def key_scopes_allowed(role: str | None) -> frozenset[str]:
    """The scopes a key created by someone of this role may keep."""
    if Permission.KEYS_MANAGE in permissions_of(role or ""):
        return frozenset(Scope)
    if Permission.KEYS_OWN in permissions_of(role or ""):
        return MEMBER_GRANTABLE_SCOPES
    return frozenset()


def permissions_of_scopes(scopes: frozenset[str] | set[str] | list[str]) -> frozenset[Permission]:
    granted: set[Permission] = set()
    for scope in scopes:
        granted |= _SCOPE_PERMISSIONS.get(scope, frozenset())
    return frozenset(granted)
