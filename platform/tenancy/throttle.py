"""Throttling of sign-in and sign-up against password guessing and mass sign-ups.

Counters live in the shared store (Redis when configured), so every web process counts together.
Failed sign-ins are counted per client IP and per account; a successful sign-in clears the
account's count. Sign-ups are counted per client IP. A blocked attempt is refused before the
password is checked, with the seconds to wait.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from tenancy import shared_store


def _key(kind: str, value: str) -> str:
    # Hashed: neither an email address nor an IP is kept in the store in clear.
    return f"throttle:{kind}:{hashlib.sha256(value.lower().encode()).hexdigest()[:32]}"


def _subjects(ip: str | None, email: str | None) -> list[tuple[str, int]]:
    subjects = []
    if ip:
        subjects.append((_key("sign-in-ip", ip), settings.SIGN_IN_MAX_FAILURES_PER_IP))
    if email:
        subjects.append((_key("sign-in-account", email), settings.SIGN_IN_MAX_FAILURES_PER_ACCOUNT))
    return subjects


def sign_in_blocked(ip: str | None, email: str | None) -> int:
    """Seconds to wait before another sign-in attempt is heard, or 0."""
    for key, limit in _subjects(ip, email):
        if shared_store.count(key) >= limit:
            return settings.SIGN_IN_THROTTLE_SECONDS
    return 0


def sign_in_failed(ip: str | None, email: str | None) -> None:
    for key, _ in _subjects(ip, email):
        shared_store.hit(key, settings.SIGN_IN_THROTTLE_SECONDS)


def sign_in_succeeded(email: str) -> None:
    shared_store.forget(_key("sign-in-account", email))


def sign_up_allowed(ip: str | None) -> int:
    """Count this sign-up attempt; seconds to wait if it is one too many, or 0."""
    if not ip:
        return 0
    if shared_store.hit(_key("sign-up-ip", ip), settings.SIGN_UP_THROTTLE_SECONDS) > settings.SIGN_UP_MAX_PER_IP:
        return settings.SIGN_UP_THROTTLE_SECONDS
    return 0


def password_reset_allowed(ip: str | None, email: str) -> tuple[int, bool]:
    """Count this reset request. Returns (seconds to wait if the address of the request sent too
    many, or 0; whether a mail may go to this account now, which the page must not reveal)."""
    window = settings.PASSWORD_RESET_THROTTLE_SECONDS
    if ip and shared_store.hit(_key("reset-ip", ip), window) > settings.PASSWORD_RESET_MAX_PER_IP:
        return window, False
    return 0, shared_store.hit(_key("reset-account", email), window) <= settings.PASSWORD_RESET_MAX_PER_ACCOUNT
