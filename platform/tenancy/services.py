"""Writes for organizations, members, invitations and API keys.

Each service owns its transaction, writes its audit row inside it, and locks what it checks
(never check-then-act): role changes lock the organization's memberships so that two concurrent
demotions cannot leave an organization without an owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from tenancy import audit, keyauth, scope, secrets, text
from tenancy.audit import Actor
from tenancy.errors import Conflict, Forbidden, ServiceError
from tenancy.models import APIKey, Invitation, Membership, Organization, slug_validator
from tenancy.roles import (
    MEMBER_GRANTABLE_SCOPES,
    RANK,
    Permission,
    Role,
    Scope,
    key_scopes_allowed,
    permissions_of,
)


@dataclass(frozen=True)
class IssuedKey:
    key: APIKey
    plaintext: str  # shown to the caller once, never stored


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # shown to the inviter once, never stored


# --- Organizations ---------------------------------------------------------------------------


def _validate_slug(slug: str) -> str:
    slug = slug.strip().lower()
    try:
        slug_validator(slug)
    except ValidationError as exc:
        raise ServiceError(f"Invalid organization slug {slug!r}: {exc.messages[0]}", "invalid_slug", "slug") from None
    return slug


@transaction.atomic
def create_organization(*, slug: str, name: str, owner, actor: Actor) -> Organization:
    slug = _validate_slug(slug)
    # Locking the owner serialises their concurrent creations, so the cap holds.
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    owned = Membership.all_orgs.filter(user=owner, role=Role.OWNER).count()
    if owned >= settings.MAX_ORGANIZATIONS_PER_USER:
        raise Forbidden(
            f"You own {owned} organizations, the most one account may own; ask an administrator for more.",
            "organization_limit",
        )
    name = text.name(name, what="An organization's name", max_length=200, required=False) or slug
    try:
        with transaction.atomic():
            org = Organization.objects.create(slug=slug, name=name)
    except IntegrityError:
        raise Conflict(f"The organization slug {slug!r} is taken.", "slug_taken", "slug") from None
    Membership.all_orgs.create(organization=org, user=owner, role=Role.OWNER)
    audit.record(
        "org.created", actor=actor, organization_id=org.pk, target=org, data={"slug": slug, "owner": owner.email}
    )
    return org


def available_slug(base: str) -> str:
    stem = slugify(base)[:32].strip("-") or "org"
    candidate, n = stem, 1
    while Organization.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


@transaction.atomic
def sign_up(
    *,
    email: str,
    password: str,
    full_name: str = "",
    organization_name: str = "",
    invitation_token: str = "",
    actor: Actor,
):
    """Create a user and, all or nothing, either their own organization with them as its owner or,
    following an invitation, their membership of the inviting organization. SIGN_UP_MODE decides
    who may: everyone (open), only the invited (invite-only), nobody (closed)."""
    mode = settings.SIGN_UP_MODE
    if mode == "closed":
        raise Forbidden("Sign-up is closed on this platform; ask an administrator for an account.", "sign_up_closed")
    if mode == "invite-only" and not invitation_token:
        raise Forbidden("Sign-up is by invitation only: follow the link in your invitation.", "invitation_required")
    User = get_user_model()
    email = User.objects.normalize_email(email).strip().lower()
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict("An account with this email address exists already. Sign in instead.", "email_taken", "email")
    full_name = text.name(full_name, param="full_name", what="A full name", max_length=200, required=False)
    organization_name = text.name(
        organization_name, param="organization_name", what="An organization's name", max_length=200, required=False
    )
    user = User(email=email, full_name=full_name)
    from django.contrib.auth.password_validation import validate_password

    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ServiceError(" ".join(exc.messages), "weak_password", "password") from None
    user.set_password(password)
    if not invitation_token:
        user.email_verified_at = None  # until they follow the link mailed to the address (verify_email)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise Conflict("An account with this email address exists already.", "email_taken", "email") from None
    acting = Actor(user=user, ip=actor.ip)
    if invitation_token:
        org = accept_invitation(token=invitation_token, user=user, actor=acting).organization
    else:
        name = organization_name.strip() or f"{full_name.strip() or email.split('@')[0]}'s organization"
        org = create_organization(slug=available_slug(name), name=name, owner=user, actor=acting)
    audit.record("user.signed_up", actor=acting, organization_id=org.pk, target=user)
    return user, org


_VERIFY_SALT = "maas.tenancy.verify-email"


def email_verification_token(user) -> str:
    """A signed, expiring token for the link that confirms the user's address (it names the
    address: a changed address makes an earlier link useless)."""
    return signing.TimestampSigner(salt=_VERIFY_SALT).sign(f"{user.pk}:{user.email}")


def verify_email(token: str, *, actor: Actor):
    """Confirm an address by the link mailed to it; returns the user. Used or expired links and
    links for another address are refused."""
    try:
        value = signing.TimestampSigner(salt=_VERIFY_SALT).unsign(
            token, max_age=timedelta(hours=settings.EMAIL_VERIFICATION_HOURS)
        )
    except signing.SignatureExpired:
        raise ServiceError(
            "This confirmation link has expired: sign in to be sent a new one.", "link_expired"
        ) from None
    except signing.BadSignature:
        raise ServiceError("This confirmation link is not valid.", "link_invalid") from None
    user_id, _, email = value.partition(":")
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=user_id, email__iexact=email).first()
        if user is None:
            raise ServiceError("This confirmation link is not valid.", "link_invalid")
        if user.email_verified_at is None:
            user.email_verified_at = timezone.now()
            user.save(update_fields=["email_verified_at"])
            audit.record("user.email_verified", actor=Actor(user=user, ip=actor.ip), target=user)
    return user


def mark_email_verified(user_id) -> None:
    """The address is shown to be theirs another way (a password reset link mailed to it)."""
    get_user_model().objects.filter(pk=user_id, email_verified_at=None).update(email_verified_at=timezone.now())


def _set_status(org_id: int, status: str, reason: str, action: str, actor: Actor) -> Organization:
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org_id)
        org.status, org.suspended_reason = status, reason
        org.save(update_fields=["status", "suspended_reason"])
        audit.record(action, actor=actor, organization_id=org.pk, target=org, data={"reason": reason} if reason else {})
        keys = list(APIKey.all_orgs.filter(organization=org).values_list("pk", flat=True))
        transaction.on_commit(lambda: keyauth.publish(keys))
    return org


def suspend_organization(org_id: int, *, reason: str = "", actor: Actor) -> Organization:
    return _set_status(org_id, Organization.Status.SUSPENDED, reason.strip(), "org.suspended", actor)


def reactivate_organization(org_id: int, *, actor: Actor) -> Organization:
    return _set_status(org_id, Organization.Status.ACTIVE, "", "org.reactivated", actor)


@transaction.atomic
def rename_organization(org_id: int, *, name: str, actor: Actor) -> Organization:
    org = Organization.objects.select_for_update().get(pk=org_id)
    old, org.name = org.name, text.name(name, what="An organization's name", max_length=200)
    org.save(update_fields=["name"])
    audit.record("org.renamed", actor=actor, organization_id=org.pk, target=org, data={"from": old, "to": org.name})
    return org


# --- Members ---------------------------------------------------------------------------------


def _check_role(role: str) -> str:
    if role not in Role.values:
        raise ServiceError(f"Unknown role {role!r}; use one of {', '.join(Role.values)}.", "invalid_role", "role")
    return role


def _may_grant(actor_role: str | None, role: str) -> bool:
    """Owners grant anything; admins grant up to admin; nobody else grants."""
    if actor_role is None:  # a platform operator or an `all`-scoped key acting as admin
        actor_role = Role.ADMIN
    if Permission.MEMBERS_MANAGE not in permissions_of(actor_role):
        return False
    return actor_role == Role.OWNER or RANK[role] < RANK[Role.OWNER]


def _locked_memberships() -> list[Membership]:
    """The scope's organization's memberships, locked (the caller runs in its scope)."""
    return list(Membership.objects.select_for_update().order_by("pk"))


@scope.scoped
@transaction.atomic
def change_role(membership_id, *, organization_id: int, role: str, actor_role: str | None, actor: Actor) -> Membership:
    role = _check_role(role)
    members = _locked_memberships()
    target = next((m for m in members if str(m.pk) == str(membership_id)), None)
    if target is None:
        raise ServiceError("No such member.", "not_found")
    if not (_may_grant(actor_role, role) and _may_grant(actor_role, target.role)):
        raise Forbidden("Only an owner can grant, change or remove the owner role.", "owner_required", "role")
    owners = [m for m in members if m.role == Role.OWNER]
    if target.role == Role.OWNER and role != Role.OWNER and len(owners) == 1:
        raise Conflict("An organization needs at least one owner; make someone else owner first.", "last_owner", "role")
    old = target.role
    if old != role:
        target.role = role
        target.save(update_fields=["role"])
        _revoke_keys_beyond(target.user_id, organization_id, key_scopes_allowed(role), actor, reason=f"role now {role}")
        _revoke_invitations_by(target.user_id, organization_id, role, actor)
        audit.record(
            "member.role_changed",
            actor=actor,
            organization_id=organization_id,
            target=target,
            data={"user": target.user.email, "from": old, "to": role},
        )
    return target


@scope.scoped
@transaction.atomic
def remove_member(membership_id, *, organization_id: int, actor_role: str | None, actor: Actor) -> None:
    members = _locked_memberships()
    target = next((m for m in members if str(m.pk) == str(membership_id)), None)
    if target is None:
        raise ServiceError("No such member.", "not_found")
    is_self = actor.user is not None and target.user_id == actor.user.pk
    if not is_self and not _may_grant(actor_role, target.role):
        raise Forbidden("Only an owner can remove an owner.", "owner_required")
    if target.role == Role.OWNER and sum(m.role == Role.OWNER for m in members) == 1:
        raise Conflict("The last owner cannot leave or be removed; make someone else owner first.", "last_owner")
    email = target.user.email
    target.delete()
    _revoke_keys_beyond(target.user_id, organization_id, frozenset(), actor, reason="member removed")
    _revoke_invitations_by(target.user_id, organization_id, None, actor)
    audit.record(
        "member.removed",
        actor=actor,
        organization_id=organization_id,
        data={"user": email, "role": target.role, "membership_id": str(membership_id)},
    )


def _revoke_keys_beyond(user_id, organization_id: int, allowed: frozenset[str], actor: Actor, *, reason: str) -> None:
    """Revoke the active keys this user created in the organization whose scopes are not all in
    `allowed` (everything, when nothing is allowed); published once the transaction commits."""
    keys = APIKey.all_orgs.select_for_update().filter(
        organization_id=organization_id, created_by_id=user_id, revoked_at=None
    )
    revoked = [key for key in keys if not set(key.scopes) <= allowed]
    for key in revoked:
        _revoke(key, actor, reason)
    if revoked:
        ids = [key.pk for key in revoked]
        transaction.on_commit(lambda: keyauth.publish(ids))


def _revoke_invitations_by(user_id, organization_id: int, role: str | None, actor: Actor) -> None:
    """Pending invitations this user sent that their role (None: no longer a member) could not send now."""
    pending = Invitation.all_orgs.select_for_update().filter(
        organization_id=organization_id, invited_by_id=user_id, accepted_at=None, revoked_at=None
    )
    for invitation in pending:
        if role is None or not _may_grant(role, invitation.role):
            _revoke_invitation(invitation, actor, "its inviter may no longer invite with this role")


def _revoke_invitation(invitation: Invitation, actor: Actor, reason: str = "") -> None:
    """Mark a locked, pending invitation revoked, with its audit row."""
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    data = {"email": invitation.email, **({"reason": reason} if reason else {})}
    audit.record(
        "invitation.revoked", actor=actor, organization_id=invitation.organization_id, target=invitation, data=data
    )


@transaction.atomic
def delete_user(user_id, *, actor: Actor) -> None:
    """Delete an account: first every live key they created, in any organization, is revoked (a
    key whose creator is gone would otherwise pass for an operator's), then the account goes."""
    User = get_user_model()
    user = User.objects.select_for_update().filter(pk=user_id).first()
    if user is None:
        return
    keys = APIKey.all_orgs.select_for_update().filter(created_by_id=user_id, revoked_at=None)
    revoked = []
    for key in keys:
        _revoke(key, actor, "user deleted")
        revoked.append(key.pk)
    Invitation.all_orgs.filter(invited_by_id=user_id, accepted_at=None, revoked_at=None).update(
        revoked_at=timezone.now()
    )
    if revoked:
        transaction.on_commit(lambda: keyauth.publish(revoked))
    user.delete()


@transaction.atomic
def deactivate_user(user_id, *, actor: Actor) -> None:
    """A deactivated user cannot sign in, and the keys they created stop working at once."""
    User = get_user_model()
    user = User.objects.select_for_update().get(pk=user_id)
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    for organization_id in Membership.all_orgs.filter(user_id=user_id).values_list("organization_id", flat=True):
        _revoke_keys_beyond(user_id, organization_id, frozenset(), actor, reason="user deactivated")


# --- Invitations -----------------------------------------------------------------------------


@scope.scoped
@transaction.atomic
def invite(*, organization_id: int, email: str, role: str, actor_role: str | None, actor: Actor) -> IssuedInvitation:
    role = _check_role(role)
    User = get_user_model()
    email = User.objects.normalize_email(email).strip().lower()
    if "@" not in email:
        raise ServiceError("Enter a valid email address.", "invalid_email", "email")
    if not _may_grant(actor_role, role):
        raise Forbidden("Only an owner can invite another owner.", "owner_required", "role")
    if Membership.objects.filter(user__email__iexact=email).exists():
        raise Conflict(f"{email} is a member already.", "already_member", "email")
    token = secrets.new_token()
    invitation = Invitation.objects.create(
        organization_id=organization_id,
        email=email,
        role=role,
        token_hash=secrets.digest(token),
        invited_by=actor.user,
        expires_at=timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS),
    )
    audit.record(
        "member.invited",
        actor=actor,
        organization_id=organization_id,
        target=invitation,
        data={"email": email, "role": role},
    )
    return IssuedInvitation(invitation, token)


@scope.scoped
@transaction.atomic
def revoke_invitation(invitation_id, *, organization_id: int, actor: Actor) -> Invitation:
    invitation = Invitation.objects.select_for_update().filter(pk=invitation_id).first()
    if invitation is None:
        raise ServiceError("No such invitation.", "not_found")
    if invitation.accepted_at is None and invitation.revoked_at is None:
        _revoke_invitation(invitation, actor)
    return invitation


@transaction.atomic
def accept_invitation(*, token: str, user, actor: Actor) -> Membership:
    invitation = Invitation.all_orgs.select_for_update().filter(token_hash=secrets.digest(token)).first()
    if invitation is None or invitation.revoked_at is not None:
        raise ServiceError("This invitation link is not valid.", "invitation_invalid")
    if invitation.accepted_at is not None:
        raise Conflict("This invitation has been used already.", "invitation_used")
    if invitation.expires_at <= timezone.now():
        raise ServiceError("This invitation has expired; ask for a new one.", "invitation_expired")
    if invitation.email.lower() != user.email.lower():
        raise Forbidden(
            f"This invitation is for {invitation.email}; sign in with that address to accept it.",
            "invitation_wrong_user",
        )
    if invitation.invited_by_id is not None:
        inviter = Membership.all_orgs.filter(
            organization_id=invitation.organization_id, user_id=invitation.invited_by_id, user__is_active=True
        ).values_list("role", flat=True)
        if not _may_grant(inviter.first() or Role.VIEWER, invitation.role):
            raise ServiceError(
                "This invitation is no longer valid: whoever sent it may no longer invite with this role.",
                "invitation_invalid",
            )
    try:
        with transaction.atomic():
            membership = Membership.all_orgs.create(
                organization_id=invitation.organization_id, user=user, role=invitation.role
            )
    except IntegrityError:
        raise Conflict("You are a member of this organization already.", "already_member") from None
    invitation.accepted_at, invitation.accepted_by = timezone.now(), user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit.record(
        "member.joined",
        actor=actor,
        organization_id=invitation.organization_id,
        target=membership,
        data={"user": user.email, "role": invitation.role, "invitation_id": str(invitation.pk)},
    )
    return membership


# --- API keys --------------------------------------------------------------------------------


def _check_scopes(scopes: list[str] | None) -> list[str]:
    scopes = list(dict.fromkeys(scopes or [Scope.ALL]))
    unknown = [s for s in scopes if s not in Scope.__members__.values()]
    if unknown:
        raise ServiceError(
            f"Unknown scope(s) {', '.join(map(repr, unknown))}; use any of {', '.join(Scope)}.",
            "invalid_scope",
            "scopes",
        )
    return scopes


@scope.scoped
@transaction.atomic
def create_api_key(
    *,
    organization_id: int,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    created_by_id: int | None = None,
    member_only: bool = False,
    console_user_id: int | None = None,
    actor: Actor,
) -> IssuedKey:
    """`member_only` is set when the creator may hold keys of their own only (the member role)."""
    name = text.name(name, what="A key's name")
    scopes = _check_scopes(scopes)
    if member_only and not set(scopes) <= MEMBER_GRANTABLE_SCOPES:
        raise Forbidden(
            f"Members may create keys with these scopes only: {', '.join(sorted(MEMBER_GRANTABLE_SCOPES))}.",
            "scope_not_allowed",
            "scopes",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("The expiry time must be in the future.", "invalid_expiry", "expires_at")
    if not Organization.objects.filter(pk=organization_id, status=Organization.Status.ACTIVE).exists():
        raise Forbidden("The organization is suspended.", "organization_suspended")
    plaintext = secrets.new_api_key()
    key = APIKey.objects.create(
        organization_id=organization_id,
        name=name,
        prefix=secrets.visible_prefix(plaintext),
        key_hash=secrets.digest(plaintext),
        scopes=scopes,
        expires_at=expires_at,
        created_by_id=created_by_id,
        console_user_id=console_user_id,
    )
    audit.record(
        "key.created",
        actor=actor,
        organization_id=organization_id,
        target=key,
        data={"name": name, "prefix": key.prefix, "scopes": scopes},
    )
    return IssuedKey(key, plaintext)


@scope.scoped
@transaction.atomic
def revoke_api_key(key_id, *, organization_id: int, actor: Actor) -> APIKey:
    key = APIKey.objects.select_for_update().select_related("organization").filter(pk=key_id).first()
    if key is None:
        raise ServiceError("No such API key.", "not_found")
    if key.console_user_id is not None:
        # Revoked, it would be made again at the member's next playground call, without the limits
        # set on it: it lives as long as the membership (remove or demote the member instead).
        raise Conflict(
            "A console key lives as long as its member's membership: limit it, or remove or demote the member.",
            "console_key",
        )
    if key.revoked_at is None:
        _revoke(key, actor)
    transaction.on_commit(lambda: keyauth.publish([key.pk]))
    return key


def _revoke(key: APIKey, actor: Actor, reason: str = "") -> None:
    """Mark a locked, active key revoked, with its audit row; the caller publishes after commit."""
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    data = {"name": key.name, "prefix": key.prefix, **({"reason": reason} if reason else {})}
    audit.record("key.revoked", actor=actor, organization_id=key.organization_id, target=key, data=data)


# --- Rate-limit overrides (set in the back office) -------------------------------------------


def _limit(value) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise ServiceError(
            "A rate limit is a whole number from 0 to 2,147,483,647 (empty for the default).", "invalid_limit"
        )
    return value


@transaction.atomic
def set_organization_limits(org_id: int, *, rpm: int | None, tpm: int | None, actor: Actor) -> Organization:
    org = Organization.objects.select_for_update().get(pk=org_id)
    org.rpm_limit, org.tpm_limit = _limit(rpm), _limit(tpm)
    org.save(update_fields=["rpm_limit", "tpm_limit"])
    audit.record("org.limits_changed", actor=actor, organization_id=org.pk, target=org, data={"rpm": rpm, "tpm": tpm})
    keys = list(APIKey.all_orgs.filter(organization=org).values_list("pk", flat=True))
    transaction.on_commit(lambda: keyauth.publish(keys))
    return org


@transaction.atomic
def set_storage_quota(org_id: int, *, quota: int | None, actor: Actor) -> Organization:
    org = Organization.objects.select_for_update().get(pk=org_id)
    if quota is not None and (not isinstance(quota, int) or quota < 0):
        raise ServiceError("A storage quota is a whole number of bytes (empty for the default).", "invalid_limit")
    org.storage_quota_bytes = quota
    org.save(update_fields=["storage_quota_bytes"])
    audit.record("org.storage_quota_changed", actor=actor, organization_id=org.pk, target=org, data={"bytes": quota})
    return org


def lock_for_storage(organization_id: int) -> int:
    """Inside the caller's transaction: lock the organization (so that its uploads check their
    quota one at a time) and return its storage quota in bytes."""
    org = Organization.objects.select_for_update().get(pk=organization_id)
    return settings.STORAGE_QUOTA_BYTES if org.storage_quota_bytes is None else org.storage_quota_bytes


@scope.scoped
@transaction.atomic
def set_key_limits(key_id, *, organization_id: int, rpm: int | None, tpm: int | None, actor: Actor) -> APIKey:
    key = APIKey.objects.select_for_update().select_related("organization").get(pk=key_id)
    key.rpm_limit, key.tpm_limit = _limit(rpm), _limit(tpm)
    key.save(update_fields=["rpm_limit", "tpm_limit"])
    audit.record(
        "key.limits_changed", actor=actor, organization_id=organization_id, target=key, data={"rpm": rpm, "tpm": tpm}
    )
    transaction.on_commit(lambda: keyauth.publish([key.pk]))
    return key


CONSOLE_KEY_SCOPES = [Scope.INFERENCE.value, Scope.MODELS_READ.value]


@scope.scoped
def console_key(*, organization_id: int, user_id: int) -> APIKey:
    """The member's console key in the organization, made on first use: a real key row (limits,
    budgets, usage by key and the audit log treat it as any key) whose secret is thrown away at
    once; the member's signed-in session stands for it (tenancy.console_auth.session_principal)."""
    found = APIKey.objects.filter(console_user_id=user_id, revoked_at=None).first()
    if found is not None:
        return found
    user = get_user_model().objects.get(pk=user_id)
    try:
        with transaction.atomic():
            issued = create_api_key(
                organization_id=organization_id,
                name=f"Console ({user.email})"[:100],
                scopes=CONSOLE_KEY_SCOPES,
                created_by_id=user_id,
                console_user_id=user_id,
                actor=Actor(user=user),
            )
    except IntegrityError:  # made concurrently by another request of the same member
        return APIKey.objects.get(console_user_id=user_id, revoked_at=None)
    return issued.key  # the secret goes no further
