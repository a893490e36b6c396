"""Budgets that never overspend: a request's worst-case cost is reserved before it runs, with
conditional UPDATEs (the condition and the debit are one statement, so concurrent requests cannot
both pass a check that only one can afford), and settled with its ledger row in one transaction.

What a reservation is held against: the organization's account (its prepaid credit, and its
monthly limit if it has one) and, if the key has a spend limit, the key's. Credit and limits are
in nano-units (billing.money). A month is a calendar month in UTC; a period's spend restarts at 0
in the first UPDATE of a new month.

Lock order everywhere: reservation rows, then account rows by organization id, then key limits by
key id — so concurrent settles, releases and reservations cannot deadlock.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import BigIntegerField, Case, F, PositiveSmallIntegerField, Q, Value, When
from django.utils import timezone

from billing import alerts, money
from billing.models import Account, KeySpendLimit, Reservation

log = logging.getLogger("billing.budgets")
BIG = BigIntegerField()
SMALL = PositiveSmallIntegerField()


class InsufficientQuota(Exception):
    """A budget cannot cover a request's worst case. `budget` names which."""

    def __init__(self, budget: str, message: str):
        super().__init__(message)
        self.budget, self.message = budget, message


@dataclass(frozen=True)
class Hold:
    """What a reservation holds; amount 0 means nothing was reserved (no budget applies)."""

    request_id: str
    organization_id: int
    api_key_id: str | None
    amount: int
    key_limited: bool = False


@dataclass(frozen=True)
class Policy:
    """Which budgets apply to an organization's requests (cached per process)."""

    prepaid: bool
    org_limited: bool
    limited_keys: frozenset = field(default_factory=frozenset)

    def applies(self, api_key_id: str | None) -> bool:
        return self.prepaid or self.org_limited or (api_key_id in self.limited_keys)


def period_of(moment: datetime) -> date:
    return moment.date().replace(day=1)


def ensure_account(organization_id: int) -> Account:
    """The organization's account, created on first use with the sign-up credit
    (BILLING_SIGNUP_CREDIT) in the default mode (BILLING_DEFAULT_MODE)."""
    account = Account.all_orgs.filter(organization_id=organization_id).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            return Account.all_orgs.create(
                organization_id=organization_id,
                mode=settings.BILLING_DEFAULT_MODE,
                credit=money.from_decimal(settings.BILLING_SIGNUP_CREDIT),
                period=period_of(timezone.now()),
            )
    except IntegrityError:  # created concurrently
        return Account.all_orgs.get(organization_id=organization_id)


_policies: dict[int, tuple[float, Policy]] = {}


def policy(organization_id: int) -> Policy:
    hit = _policies.get(organization_id)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    try:
        account = ensure_account(organization_id)
        keys = frozenset(
            str(k)
            for k in KeySpendLimit.all_orgs.filter(organization_id=organization_id).values_list("api_key_id", flat=True)
        )
        found = Policy(account.mode == Account.Mode.PREPAID, account.monthly_limit is not None, keys)
    except DatabaseError:
        if hit is None:
            raise
        found = hit[1]  # the database is away: the budgets known a moment ago still say what applies
    _policies[organization_id] = (time.monotonic() + settings.BILLING_CACHE_SECONDS, found)
    return found


def forget() -> None:
    _policies.clear()


def cached_policy(organization_id: int) -> Policy | None:
    hit = _policies.get(organization_id)
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def _spent_this_period(period: date):
    # Conditions and debits stay inside one UPDATE ... WHERE (no annotation, which Django may turn
    # into a subquery that a concurrent update would not re-check).
    return Case(When(period=period, then=F("period_spent")), default=Value(0), output_field=BIG)


def reserve(*, request_id: str, organization_id: int, api_key_id: str | None, amount: int, ttl_seconds: int) -> Hold:
    """Hold `amount` against every budget that applies, or raise InsufficientQuota naming the first
    that cannot cover it (and hold nothing). Where no budget applies, nothing touches the database
    but a refresh of the cached policy, which survives the database being away."""
    found = policy(organization_id)
    if amount <= 0 or not found.applies(api_key_id):
        return Hold(request_id, organization_id, api_key_id, 0)
    key_limited = api_key_id is not None and api_key_id in found.limited_keys
    for attempt in range(2):
        try:
            if connection.vendor == "postgresql" and not key_limited and not connection.in_atomic_block:
                return _hold_in_one_statement(request_id, organization_id, api_key_id, amount, ttl_seconds)
            with transaction.atomic():
                return _hold(request_id, organization_id, api_key_id, amount, ttl_seconds, found)
        except _AccountMissing:
            # The cached policy outlived the account's absence (a new organization): make it, once.
            if attempt:
                raise
            ensure_account(organization_id)
    raise AssertionError("unreachable")


class _AccountMissing(Exception):
    pass


HOLD_STATEMENT = """
    WITH debit AS (
        UPDATE {account} SET
            reserved = reserved + %(amount)s,
            period_spent = CASE WHEN period = %(period)s THEN period_spent ELSE 0 END,
            alerted_percent = CASE WHEN period = %(period)s THEN alerted_percent ELSE 0 END,
            period = %(period)s
        WHERE organization_id = %(org)s
          AND (mode = %(invoiced)s OR credit >= reserved + %(amount)s)
          AND (monthly_limit IS NULL OR monthly_limit >=
               (CASE WHEN period = %(period)s THEN period_spent ELSE 0 END) + reserved + %(amount)s)
        RETURNING organization_id
    )
    INSERT INTO {reservation}
        (organization_id, request_id, api_key_id, amount, key_limited, created_at, expires_at)
    SELECT organization_id, %(request_id)s, %(key)s, %(amount)s, false, %(now)s, %(expires)s FROM debit
    RETURNING id
"""


def hold_statement(
    request_id: str, organization_id: int, api_key_id: str | None, amount: int, ttl_seconds: int
) -> tuple[str, dict]:
    """PostgreSQL's reservation in one statement, when no key limit applies: a CTE whose UPDATE
    debits the account under the same conditions as _hold and whose INSERT writes the reservation
    only if the debit happened — one round trip, the account row locked for one statement. It
    returns a row if the reservation was made."""
    now = timezone.now()
    sql = HOLD_STATEMENT.format(account=Account._meta.db_table, reservation=Reservation._meta.db_table)
    return sql, {
        "amount": amount,
        "period": period_of(now),
        "org": organization_id,
        "invoiced": Account.Mode.INVOICED.value,
        "request_id": request_id,
        "key": uuid.UUID(str(api_key_id)) if api_key_id else None,
        "now": now,
        "expires": now + timedelta(seconds=ttl_seconds),
    }


def _hold_in_one_statement(
    request_id: str, organization_id: int, api_key_id: str | None, amount: int, ttl_seconds: int
) -> Hold:
    with connection.cursor() as cursor:
        cursor.execute(*hold_statement(request_id, organization_id, api_key_id, amount, ttl_seconds))
        if cursor.fetchone() is None:
            raise _why_not(organization_id, amount)
    return Hold(request_id, organization_id, api_key_id, amount)


def _hold(request_id: str, organization_id: int, api_key_id: str | None, amount: int, ttl_seconds: int, found) -> Hold:
    now = timezone.now()
    period = period_of(now)
    updated = (
        Account.all_orgs.filter(organization_id=organization_id)
        .filter(Q(mode=Account.Mode.INVOICED) | Q(credit__gte=F("reserved") + amount))
        .filter(Q(monthly_limit=None) | Q(monthly_limit__gte=_spent_this_period(period) + F("reserved") + amount))
        .update(
            reserved=F("reserved") + amount,
            period_spent=_spent_this_period(period),
            alerted_percent=_alerted_this_period(period),
            period=period,
        )
    )
    if not updated:
        raise _why_not(organization_id, amount)
    key_limited = api_key_id is not None and api_key_id in found.limited_keys
    if key_limited:
        updated = (
            KeySpendLimit.all_orgs.filter(api_key_id=api_key_id)
            .filter(monthly_limit__gte=_spent_this_period(period) + F("reserved") + amount)
            .update(
                reserved=F("reserved") + amount,
                period_spent=_spent_this_period(period),
                alerted_percent=_alerted_this_period(period),
                period=period,
            )
        )
        if not updated and KeySpendLimit.all_orgs.filter(api_key_id=api_key_id).exists():
            raise InsufficientQuota(
                "api_key_monthly_limit",
                "This API key has reached its monthly spend limit. Raise the key's limit or use another key.",
            )
        key_limited = bool(updated)
    Reservation.all_orgs.create(
        request_id=request_id,
        organization_id=organization_id,
        api_key_id=api_key_id,
        amount=amount,
        key_limited=key_limited,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    return Hold(request_id, organization_id, api_key_id, amount, key_limited)


def shortfall(organization_id: int, amount: int) -> InsufficientQuota | None:
    """The budget that could not cover `amount` more now, or None."""
    account = ensure_account(organization_id)
    if account.mode == Account.Mode.PREPAID and account.credit - account.reserved < amount:
        return _why_not(organization_id, amount)
    spent = account.period_spent if account.period == period_of(timezone.now()) else 0
    if account.monthly_limit is not None and spent + account.reserved + amount > account.monthly_limit:
        return _why_not(organization_id, amount)
    return None


def _why_not(organization_id: int, amount: int) -> Exception:
    account = Account.all_orgs.filter(organization_id=organization_id).first()
    if account is None:
        return _AccountMissing()
    if account.mode == Account.Mode.PREPAID and account.credit - account.reserved < amount:
        return InsufficientQuota(
            "organization_credit",
            "You exceeded your current quota: the organization's credit balance cannot cover this request. "
            "Add credit to continue.",
        )
    return InsufficientQuota(
        "organization_monthly_limit",
        "You exceeded your current quota: the organization has reached its monthly spend limit. "
        "An owner can raise the limit.",
    )


def _alerted_this_period(period: date):
    return Case(When(period=period, then=F("alerted_percent")), default=Value(0), output_field=SMALL)


def _less(held, released: int):
    return Case(When(reserved__gte=released, then=held - released), default=Value(0), output_field=BIG)


def _apply(organization_amounts: dict, key_amounts: dict, period: date) -> None:
    """Settle per account: release what was held, charge what was spent."""
    for organization_id in sorted(organization_amounts):
        released, spent = organization_amounts[organization_id]
        Account.all_orgs.filter(organization_id=organization_id).update(
            reserved=_less(F("reserved"), released),
            credit=Case(
                When(mode=Account.Mode.PREPAID, then=F("credit") - spent), default=F("credit"), output_field=BIG
            ),
            period_spent=_spent_this_period(period) + spent,
            alerted_percent=_alerted_this_period(period),
            period=period,
        )
    for api_key_id in sorted(key_amounts):
        released, spent = key_amounts[api_key_id]
        KeySpendLimit.all_orgs.filter(api_key_id=api_key_id).update(
            reserved=_less(F("reserved"), released),
            period_spent=_spent_this_period(period) + spent,
            alerted_percent=_alerted_this_period(period),
            period=period,
        )
    if any(spent for _, spent in organization_amounts.values()):
        # Only limits can alert: skip the query for organizations this process knows have none (a
        # limit set a moment ago is checked at the first settle after the cached policy refreshes).
        known = {o: cached_policy(o) for o in organization_amounts}
        orgs = [o for o, p in known.items() if p is None or p.org_limited]
        unknown = any(p is None for p in known.values())
        limited = frozenset().union(*(p.limited_keys for p in known.values() if p is not None))
        keys = [k for k in key_amounts if unknown or k in limited]
        if orgs or keys:
            alerts.check(orgs, keys)


def _take(request_ids: list[str]) -> dict[str, Reservation]:
    """Delete the reservations of these requests, returning those that were there: one statement
    (DELETE … RETURNING locks each row it deletes, so a concurrent settle or release of the same
    request waits, then finds it gone — each is taken once)."""
    table = connection.ops.quote_name(Reservation._meta.db_table)
    rows: list = []
    with connection.cursor() as cursor:
        for start in range(0, len(request_ids), 1000):
            chunk = request_ids[start : start + 1000]
            cursor.execute(
                f"DELETE FROM {table} WHERE request_id IN ({', '.join(['%s'] * len(chunk))}) "  # noqa: S608
                "RETURNING request_id, organization_id, api_key_id, amount, key_limited",
                chunk,
            )
            rows += cursor.fetchall()
    return {
        request_id: Reservation(
            request_id=request_id,
            organization_id=organization_id,
            api_key_id=uuid.UUID(str(api_key_id)) if api_key_id else None,  # SQLite returns the hex text
            amount=amount,
            key_limited=bool(key_limited),
        )
        for request_id, organization_id, api_key_id, amount, key_limited in rows
    }


def settle(written: list[dict]) -> None:
    """Inside the transaction that wrote these ledger records: release their reservations and
    charge their cost to the organization's account and the key's limit."""
    if not written:
        return
    held = _take([r["request_id"] for r in written])
    organizations: dict = defaultdict(lambda: [0, 0])
    keys: dict = defaultdict(lambda: [0, 0])
    for record in written:
        reservation = held.get(record["request_id"])
        organization = organizations[record["organization_id"]]
        organization[1] += record["cost"]
        if reservation is not None:
            organization[0] += reservation.amount
        key_id = record.get("api_key_id")
        if key_id:
            keys[str(key_id)][1] += record["cost"]
            if reservation is not None and reservation.key_limited:
                keys[str(key_id)][0] += reservation.amount
    _apply(organizations, keys, period_of(timezone.now()))


@transaction.atomic
def release(request_ids: list[str]) -> int:
    """Give back what these requests held, without charging anything (a request that never reached
    a model server, or one the reaper found gone). Returns how many were released."""
    held = _take(request_ids)
    organizations: dict = defaultdict(lambda: [0, 0])
    keys: dict = defaultdict(lambda: [0, 0])
    for reservation in held.values():
        organizations[reservation.organization_id][0] += reservation.amount
        if reservation.key_limited and reservation.api_key_id:
            keys[str(reservation.api_key_id)][0] += reservation.amount
    _apply(organizations, keys, period_of(timezone.now()))
    return len(held)


def release_expired() -> int:
    """The reaper: reservations past their expiry belong to requests that are gone (their process
    died before writing a usage record); give them back."""
    expired = list(
        Reservation.all_orgs.filter(expires_at__lt=timezone.now()).values_list("request_id", flat=True)[:1000]
    )
    released = release(expired) if expired else 0
    if released:
        log.warning("released %d expired reservation(s)", released)
    return released
