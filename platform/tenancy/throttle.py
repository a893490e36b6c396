"""Throttling of sign-in and sign-up against password guessing and mass sign-ups.

Counters live in the shared store (Redis when configured), so every web process counts together.
Sign-in attempts are counted per client IP and per account as they arrive, and a successful one is
taken back (it also clears the account's count), so what is counted is failures. Sign-ups are
counted per client IP. A blocked attempt is refused before the password is checked, with the
seconds to wait. The console's sign-in and the back office's are the same door.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from tenancy import shared_store


def _key(kind: str, value: str) -> str:
    # Hashed: neither an email address nor an IP is kept in the store in clear. Normalised as the
    # sign-in form normalises it, so " Owner@x " counts with "owner@x".
    return f"throttle:{kind}:{hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]}"


def _subjects(ip: str | None, email: str | None) -> list[tuple[str, int]]:
    subjects = []
    if ip:
        subjects.append((_key("sign-in-ip", ip), settings.SIGN_IN_MAX_FAILURES_PER_IP))
    if email:
        subjects.append((_key("sign-in-account", email), settings.SIGN_IN_MAX_FAILURES_PER_ACCOUNT))
    return subjects


def sign_in_attempt(ip: str | None, email: str | None) -> int:
    """Count this sign-in attempt before its password is checked (one atomic increment per counter,
    so concurrent guesses cannot all pass a check made before any of them counted); seconds to
    wait if it is one too many, or 0. A successful attempt is taken back (sign_in_succeeded)."""
    blocked = False
    for key, limit in _subjects(ip, email):
        blocked |= shared_store.hit(key, settings.SIGN_IN_THROTTLE_SECONDS) > limit
    return settings.SIGN_IN_THROTTLE_SECONDS if blocked else 0


def sign_in_succeeded(ip: str | None, email: str) -> None:
    shared_store.forget(_key("sign-in-account", email))
    if ip:
        shared_store.unhit(_key("sign-in-ip", ip))


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
