"""Authenticating API keys on every request, fast.

A key's state is cached by the SHA-256 of the key in the shared cache (Redis in production), so
a request costs no database query. Writers never delete a cache entry: they overwrite it with the
new state (`set`) after their transaction commits, while readers fill a missing entry with `add`
only. A reader that read the database just before a revocation therefore cannot put the stale,
still-active state back over the revocation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenancy import secrets, shared_store
from tenancy.detached import returning_connection
from tenancy.errors import ServiceError
from tenancy.models import APIKey, Organization
from tenancy.roles import Scope


@dataclass(frozen=True)
class KeyPrincipal:
    """What a request authenticated with an API key may act as."""

    key_id: str
    name: str
    organization_id: int
    organization_slug: str
    organization_status: str
    suspended_reason: str
    scopes: frozenset[str]
    expires_at: float | None
    created_by_id: int | None
    revoked: bool = False
    key_rpm: int | None = None  # None: the platform default
    key_tpm: int | None = None
    org_rpm: int | None = None
    org_tpm: int | None = None

    is_authenticated = True

    def allows(self, scope: str) -> bool:
        return Scope.ALL in self.scopes or scope in self.scopes

    def to_cache(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = sorted(self.scopes)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> KeyPrincipal:
        return cls(**{**data, "scopes": frozenset(data["scopes"])})

    @classmethod
    def from_row(cls, key: APIKey, organization: Organization) -> KeyPrincipal:
        return cls(
            key_id=str(key.pk),
            name=key.name,
            organization_id=organization.pk,
            organization_slug=organization.slug,
            organization_status=organization.status,
            suspended_reason=organization.suspended_reason,
            scopes=frozenset(key.scopes),
            expires_at=key.expires_at.timestamp() if key.expires_at else None,
            created_by_id=key.created_by_id,
            revoked=key.revoked_at is not None,
            key_rpm=key.rpm_limit,
            key_tpm=key.tpm_limit,
            org_rpm=organization.rpm_limit,
            org_tpm=organization.tpm_limit,
        )


class KeyRejected(ServiceError):
    """The request's key does not authenticate it. Carries the HTTP status and an OpenAI error."""

    def __init__(self, status: int, code: str, message: str, error_type: str = "invalid_request_error"):
        super().__init__(message, code, status=status, error_type=error_type)


def _cache_key(key_hash: str) -> str:
    return f"apikey:v1:{key_hash}"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _hash_of(raw_key: str | None) -> str:
    if not raw_key:
        raise KeyRejected(
            401,
            "missing_api_key",
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-...'.",
        )
    if not secrets.looks_like_api_key(raw_key):
        raise KeyRejected(401, "invalid_api_key", "Incorrect API key provided.")
    return secrets.digest(raw_key)


def authenticate(raw_key: str | None) -> KeyPrincipal:
    """Return the principal for a raw key or raise KeyRejected. Never logs the key."""
    key_hash = _hash_of(raw_key)
    cached = shared_store.get(_cache_key(key_hash))
    principal = KeyPrincipal.from_cache(cached) if cached is not None else _load(key_hash)
    check(principal)
    if shared_store.add(_touch_key(key_hash), 1, settings.API_KEY_LAST_USED_RESOLUTION_SECONDS):
        _record_use(key_hash)
    return principal


async def aauthenticate(raw_key: str | None) -> KeyPrincipal:
    """The same for async views: a cache hit costs one shared-store round trip and no thread hop."""
    key_hash = _hash_of(raw_key)
    cached, first_use_in_window = await shared_store.aget_and_add(
        _cache_key(key_hash), _touch_key(key_hash), settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
    )
    if cached is not None:
        principal = KeyPrincipal.from_cache(cached)
    else:
        principal = await sync_to_async(returning_connection(_load))(key_hash)  # a miss: rare
    check(principal)
    if first_use_in_window:
        await sync_to_async(returning_connection(_record_use))(key_hash)
    return principal


def _load(key_hash: str) -> KeyPrincipal:
    row = APIKey.all_orgs.select_related("organization").filter(key_hash=key_hash).first()
    if row is None:
        raise KeyRejected(401, "invalid_api_key", "Incorrect API key provided.")
    principal = KeyPrincipal.from_row(row, row.organization)
    shared_store.add(_cache_key(key_hash), principal.to_cache(), _ttl(principal))
    return principal


def _ttl(principal: KeyPrincipal) -> int:
    ttl = settings.API_KEY_CACHE_SECONDS
    if principal.expires_at is not None and not principal.revoked:
        ttl = max(1, min(ttl, int(principal.expires_at - timezone.now().timestamp()) + 1))
    return ttl


def check(principal: KeyPrincipal) -> None:
    """Refuse a revoked or expired key, or one of a suspended organization."""
    if principal.revoked:
        raise KeyRejected(401, "api_key_revoked", "This API key has been revoked.")
    if principal.expires_at is not None and principal.expires_at <= timezone.now().timestamp():
        when = datetime.fromtimestamp(principal.expires_at, tz=UTC).isoformat()
        raise KeyRejected(401, "api_key_expired", f"This API key expired at {when}.")
    if principal.organization_status != Organization.Status.ACTIVE:
        reason = f" Reason: {principal.suspended_reason}." if principal.suspended_reason else ""
        raise KeyRejected(
            403,
            "organization_suspended",
            f"Organization '{principal.organization_slug}' is suspended.{reason} Contact the platform administrator.",
            error_type="permission_error",
        )


def _touch_key(key_hash: str) -> str:
    # Last use is written at most once per resolution window per key, across all processes.
    return f"apikey:used:{key_hash}"


def _record_use(key_hash: str) -> None:
    APIKey.all_orgs.filter(key_hash=key_hash).update(last_used_at=timezone.now())


def publish(key_ids: list) -> None:
    """Overwrite the cached state of these keys with their state in the database. Call after the
    transaction that changed them has committed.

    The rows are re-read under their row locks and the cache is written before the locks are
    released: every change to a key row takes the same lock, so two publications of one key land
    in the order of their changes, and a stale one (say, limits edited just before a revocation)
    can never put an active state back over the revoked one."""
    if not key_ids:
        return
    with transaction.atomic():
        keys = list(APIKey.all_orgs.select_for_update().select_related("organization").filter(pk__in=key_ids))
        entries = {_cache_key(k.key_hash): KeyPrincipal.from_row(k, k.organization).to_cache() for k in keys}
        if entries:
            shared_store.set_many(entries, settings.API_KEY_CACHE_SECONDS)
