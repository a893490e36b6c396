"""Billing notices (billing.alerts.notify), and spend-limit alerts among them: when a period's
spend crosses 50, 80 or 100 % of a monthly limit (the organization's or a key's), one notice per
threshold and period — a notification row for the
console, an email to the organization's owners and admins, an audit row.

"Once per period" is a conditional UPDATE of the limit row's alerted_percent (which a new period
resets), so two settles crossing the same threshold at once send one alert.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from billing import money
from billing.models import Account, KeySpendLimit, Notification
from tenancy import audit, selectors
from tenancy.audit import Actor

log = logging.getLogger("billing.alerts")
THRESHOLDS = (50, 80, 100)


def _crossed(spent: int, limit: int) -> int:
    percent = spent * 100 // limit if limit else 100
    return max((t for t in THRESHOLDS if percent >= t), default=0)


def check(organization_ids: list[int], api_key_ids: list[str]) -> None:
    """Inside the settling transaction: alert on every limit whose spend crossed a new threshold."""
    for account in Account.all_orgs.filter(organization_id__in=organization_ids, monthly_limit__isnull=False):
        level = _crossed(account.period_spent, account.monthly_limit)
        if level > account.alerted_percent and Account.all_orgs.filter(pk=account.pk, alerted_percent__lt=level).update(
            alerted_percent=level
        ):
            _notify(account.organization_id, level, account.period_spent, account.monthly_limit, key=None)
    if not api_key_ids:
        return
    for limit in KeySpendLimit.all_orgs.filter(api_key_id__in=api_key_ids).select_related("api_key"):
        level = _crossed(limit.period_spent, limit.monthly_limit)
        if level > limit.alerted_percent and KeySpendLimit.all_orgs.filter(
            pk=limit.pk, alerted_percent__lt=level
        ).update(alerted_percent=level):
            _notify(limit.organization_id, level, limit.period_spent, limit.monthly_limit, key=limit.api_key)


def _notify(organization_id: int, level: int, spent: int, limit: int, key) -> None:
    whose = f"API key '{key.name}' ({key.prefix}…)" if key is not None else "Your organization"
    title = f"{whose} has used {level} % of its monthly spend limit"
    body = (
        f"{whose} has spent {money.display(spent, 2)} of its monthly limit of {money.display(limit, 2)} "
        f"this month."
        + (" Requests beyond the limit are refused until the next month or a higher limit." if level >= 100 else "")
    )
    data = {"percent": level, "spent": str(money.to_decimal(spent)), "limit": str(money.to_decimal(limit))}
    if key is not None:
        data["api_key_id"] = str(key.pk)
    notify(
        organization_id,
        kind="spend_limit",
        level="critical" if level >= 100 else "warning",
        title=title,
        body=body,
        data=data,
        action="billing.spend_alert",
    )


def notify(organization_id: int, *, kind: str, level: str, title: str, body: str, data: dict, action: str) -> None:
    """Inside the caller's transaction: a notification for the console, an audit row, and (once
    the transaction commits) an email to the organization's owners and admins."""
    Notification.all_orgs.create(
        organization_id=organization_id, kind=kind, level=level, title=title, body=body, data=data
    )
    audit.record(action, actor=Actor.system(), organization_id=organization_id, data=data)
    recipients = selectors.administrator_emails(organization_id)
    if recipients:
        transaction.on_commit(lambda: _email(recipients, title, body))


def _email(recipients: list[str], subject: str, body: str) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # the notification row and the audit row stand; the mail is best effort
        log.exception("could not send a billing notice to %d recipient(s)", len(recipients))
