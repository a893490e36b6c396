"""Audit rows for sign-in, sign-out and failed sign-in, wherever they happen (console or back office).

Django announces these through its auth signals; listening is the only way to see the back
office's own sign-ins, so this is the one place the project uses signals.
"""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from tenancy import audit
from tenancy.audit import Actor, client_ip


def _ip(request) -> str | None:
    return client_ip(request) if request is not None else None


@receiver(user_logged_in, dispatch_uid="maas-audit-sign-in")
def _signed_in(sender, request, user, **kwargs) -> None:
    audit.record("auth.signed_in", actor=Actor(user=user, ip=_ip(request)), target=user)


@receiver(user_logged_out, dispatch_uid="maas-audit-sign-out")
def _signed_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        audit.record("auth.signed_out", actor=Actor(user=user, ip=_ip(request)), target=user)


@receiver(user_login_failed, dispatch_uid="maas-audit-sign-in-failed")
def _sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already masked the password in `credentials`; keep only the address tried.
    email = str(credentials.get("username") or credentials.get("email") or "")[:254]
    audit.record("auth.sign_in_failed", actor=Actor(ip=_ip(request)), data={"email": email})
