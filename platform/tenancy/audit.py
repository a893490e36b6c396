"""Writing audit rows. Called inside the service's transaction, so the row commits with the change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenancy.models import AuditLog


@dataclass(frozen=True)
class Actor:
    """Who is acting, and from where. Built by the view from the request."""

    user: Any = None  # accounts.User or None
    api_key_id: Any = None
    ip: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls()

    @classmethod
    def from_key(cls, principal, request) -> Actor:
        return cls(api_key_id=principal.key_id, ip=client_ip(request))

    @classmethod
    def from_request(cls, request) -> Actor:
        principal = getattr(request, "auth", None)
        key_id = getattr(principal, "key_id", None)
        user = request.user if getattr(request.user, "is_authenticated", False) and key_id is None else None
        return cls(user=user, api_key_id=key_id, ip=client_ip(request))


def client_ip(request) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client says unless a trusted proxy set it.
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str, *, actor: Actor, organization_id: int | None = None, target: Any = None, data: dict | None = None
) -> AuditLog:
    user = actor.user if actor.user is not None and getattr(actor.user, "pk", None) else None
    return AuditLog.all_orgs.create(
        organization_id=organization_id,
        actor=user,
        actor_api_key_id=actor.api_key_id,
        action=action,
        target_type=type(target).__name__ if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=data or {},
        ip=actor.ip,
    )
