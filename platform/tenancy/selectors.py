"""Reads across the tenancy app. Cross-organization reads are named as such."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tenancy import secrets
from tenancy.models import APIKey, AuditLog, Invitation, Membership, Organization
from tenancy.roles import Permission, permissions_of, permissions_of_scopes


@dataclass(frozen=True)
class OrgAccess:
    """An actor's standing in one organization: by membership (session) or by API key."""

    organization: Organization
    role: str | None
    permissions: frozenset[Permission]
    user_id: int | None = None
    key_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def memberships_of_user(user) -> list[Membership]:
    """Every organization a user belongs to (a cross-organization read by the user's own key)."""
    return list(Membership.all_orgs.filter(user=user).select_related("organization").order_by("organization__slug"))


def access_by_membership(user, slug: str) -> OrgAccess | None:
    membership = (
        Membership.all_orgs.select_related("organization").filter(user=user, organization__slug=slug).first()
        if getattr(user, "is_authenticated", False)
        else None
    )
    if membership is None:
        return None
    return OrgAccess(membership.organization, membership.role, permissions_of(membership.role), user_id=user.pk)


def access_by_key(principal, slug: str) -> OrgAccess | None:
    if principal.organization_slug != slug:
        return None
    organization = Organization.objects.filter(pk=principal.organization_id).first()
    if organization is None:
        return None
    granted = permissions_of_scopes(principal.scopes)
    if principal.created_by_id is not None:
        # A key never does more than its creator's role allows today (a key made before a rule
        # tightened, or one whose revocation has not reached this process yet).
        role = (
            Membership.all_orgs.filter(organization_id=organization.pk, user_id=principal.created_by_id)
            .values_list("role", flat=True)
            .first()
        )
        granted &= permissions_of(role or "")
    return OrgAccess(
        organization,
        None,
        granted,
        user_id=principal.created_by_id,
        key_id=principal.key_id,
    )


def invitation_by_token(token: str) -> Invitation | None:
    return Invitation.all_orgs.select_related("organization").filter(token_hash=secrets.digest(token)).first()


def first_owner_id(organization_id: int) -> int | None:
    """The organization's first owner (who created it, for an organization made by sign-up)."""
    from tenancy.roles import Role

    return (
        Membership.all_orgs.filter(organization_id=organization_id, role=Role.OWNER)
        .order_by("created_at", "pk")
        .values_list("user_id", flat=True)
        .first()
    )


def administrator_emails(organization_id: int) -> list[str]:
    """Where an organization's notices go: its active owners' and admins' addresses."""
    from tenancy.roles import Role

    return sorted(
        Membership.all_orgs.filter(
            organization_id=organization_id, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
        ).values_list("user__email", flat=True)
    )


def key_id(value) -> str | None:
    """An API key id in its canonical form (a UUID's text, as the API document's `uuid` format
    says: hyphenated, in either case), or None if the value is not one."""
    try:
        canonical = str(uuid.UUID(str(value)))
    except ValueError:
        return None
    return canonical if canonical == str(value).lower() else None


def organization_key_ids(organization_id: int, values) -> set[str]:
    """Those of the values that are ids of the organization's API keys (canonical form)."""
    wanted = {k for k in map(key_id, values) if k}
    found = APIKey.all_orgs.filter(organization_id=organization_id, pk__in=wanted).values_list("pk", flat=True)
    return {str(pk) for pk in found}


def audit_entries(organization_id: int, action_prefix: str = ""):
    """The organization's audit log, newest first, with who acted."""
    rows = AuditLog.all_orgs.filter(organization_id=organization_id).select_related("actor", "actor_api_key")
    if action_prefix:
        rows = rows.filter(action__startswith=action_prefix)
    return rows.order_by("-at", "-id")


def visible_keys(access: OrgAccess):
    """The one rule for which API keys a member sees and may revoke: owners and admins every key
    of the organization; others the keys they created (their console key among them)."""
    rows = APIKey.all_orgs.filter(organization_id=access.organization.pk).select_related("created_by")
    if not access.can(Permission.KEYS_MANAGE):
        rows = rows.filter(created_by_id=access.user_id) if access.user_id else rows.none()
    return rows
