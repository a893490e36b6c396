"""Budgets that never overspend: money is reserved before it is spent, under the account's row
lock or in conditional UPDATEs (the condition and the debit are one statement), so concurrent
requests cannot both pass a check that only one can afford, and settled with its ledger rows in
one transaction.

Two kinds of reservation (billing.models.Reservation): a fine-tune's estimated cost, reserved and
settled per job; and a web process's bulk hold, which billing.holds tops up here (`top_up`) and
draws requests' worst cases from in memory, renews while the process lives (`renew`) and gives
back what it does not need (`shrink`). A request's ledger row charges its cost to the bulk hold
it was admitted from (`spent`), moving that much from reserved to spent on the account.

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
from billing.models import Account, KeySpendLimit, Reservation, SignUpCredit
from tenancy import selectors as tenancy_selectors
from tenancy.errors import ServiceError

log = logging.getLogger("billing.budgets")
BIG = BigIntegerField()
SMALL = PositiveSmallIntegerField()


class InsufficientQuota(ServiceError):
    """A budget cannot cover a request's worst case. `budget` names which."""

    status = 429
    error_type = "insufficient_quota"

    def __init__(self, budget: str, message: str):
        super().__init__(message, "insufficient_quota", headers={"x-should-retry": "false", "x-budget": budget})
        self.budget = budget


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
    """The organization's account, created on first use in the default mode (BILLING_DEFAULT_MODE),
    with the sign-up credit (BILLING_SIGNUP_CREDIT) if its owner has not had it yet: once per
    person, not per organization they create."""
    account = Account.all_orgs.filter(organization_id=organization_id).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            account = Account.all_orgs.create(
                organization_id=organization_id,
                mode=settings.BILLING_DEFAULT_MODE,
                credit=0,
                period=period_of(timezone.now()),
            )
            _grant_sign_up_credit(account)
            return account
    except IntegrityError:  # created concurrently
        return Account.all_orgs.get(organization_id=organization_id)


def _grant_sign_up_credit(account: Account) -> None:
    amount = money.from_decimal(settings.BILLING_SIGNUP_CREDIT)
    owner = tenancy_selectors.first_owner_id(account.organization_id)
    if not amount or owner is None:
        return
    try:
        with transaction.atomic():
            SignUpCredit.all_orgs.create(organization_id=account.organization_id, user_id=owner, amount=amount)
    except IntegrityError:  # this person had it with an earlier organization
        return
    Account.all_orgs.filter(pk=account.pk).update(credit=F("credit") + amount)
    account.credit += amount


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
    for attempt in range(2):
        try:
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
            raise _refusal("api_key_monthly_limit")
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
        return _refusal("organization_credit")
    return _refusal("organization_monthly_limit")


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
                "RETURNING request_id, organization_id, api_key_id, amount, spent, key_limited",
                chunk,
            )
            rows += cursor.fetchall()
    return {
        request_id: Reservation(
            request_id=request_id,
            organization_id=organization_id,
            api_key_id=uuid.UUID(str(api_key_id)) if api_key_id else None,  # SQLite returns the hex text
            amount=max(0, amount - spent),  # what it still held
            key_limited=bool(key_limited),
        )
        for request_id, organization_id, api_key_id, amount, spent, key_limited in rows
    }


def _charge_bulk(costs: dict[str, int]) -> dict[str, tuple[bool, str | None]]:
    """Add each cost to its bulk hold's `spent`, one statement per hold, in id order (the lock
    order); returns, for the holds that still exist, whether they are key-limited and their key."""
    table = connection.ops.quote_name(Reservation._meta.db_table)
    found = {}
    with connection.cursor() as cursor:
        for hold_id in sorted(costs):
            cursor.execute(
                f"UPDATE {table} SET spent = spent + %s WHERE request_id = %s "  # noqa: S608
                "RETURNING key_limited, api_key_id",
                [costs[hold_id], hold_id],
            )
            row = cursor.fetchone()
            if row is not None:
                found[hold_id] = (bool(row[0]), str(uuid.UUID(str(row[1]))) if row[1] else None)
    return found


def settle(written: list[dict]) -> None:
    """Inside the transaction that wrote these ledger records: charge their cost to the
    organization's account and the key's limit, releasing what they were admitted from — their
    own reservation (a fine-tune's), or that much of the bulk hold named by the record's `hold`
    (a bulk hold already reaped releases nothing more: the reaper gave it back)."""
    if not written:
        return
    own = [r for r in written if not r.get("hold")]
    held = _take([r["request_id"] for r in own]) if own else {}
    bulk_costs: dict[str, int] = defaultdict(int)
    for record in written:
        if record.get("hold"):
            bulk_costs[record["hold"]] += record["cost"]
    bulk = _charge_bulk(bulk_costs) if bulk_costs else {}
    organizations: dict = defaultdict(lambda: [0, 0])
    keys: dict = defaultdict(lambda: [0, 0])
    for record in written:
        cost = record["cost"]
        organization = organizations[record["organization_id"]]
        organization[1] += cost
        key_id = str(record["api_key_id"]) if record.get("api_key_id") else None
        if key_id:
            keys[key_id][1] += cost
        if record.get("hold"):
            if record["hold"] in bulk:
                organization[0] += cost
                key_limited, hold_key = bulk[record["hold"]]
                if key_limited and hold_key:
                    keys[hold_key][0] += cost
            continue
        reservation = held.get(record["request_id"])
        if reservation is not None:
            organization[0] += reservation.amount
            if reservation.key_limited and key_id:
                keys[key_id][0] += reservation.amount
    _apply(organizations, keys, period_of(timezone.now()))
    if bulk:
        # Holds their process gave up, now wholly charged, have nothing left to hold.
        Reservation.all_orgs.filter(request_id__in=list(bulk), closed=True, spent__gte=F("amount")).delete()


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
    """The reaper: reservations past their expiry belong to a job or a web process that is gone
    (it stopped renewing); give back what they still hold."""
    expired = list(
        Reservation.all_orgs.filter(expires_at__lt=timezone.now()).values_list("request_id", flat=True)[:1000]
    )
    released = release(expired) if expired else 0
    if released:
        log.warning("released %d expired reservation(s)", released)
    return released


# --- Bulk holds (drawn from in memory by billing.holds) -----------------------------------------


class HoldLost(Exception):
    """A bulk hold's row is gone or closed (reaped after its process stalled past the TTL): its
    process must start another."""


def _available(account: Account, period: date) -> tuple[int | None, str]:
    """How much more the account can hold now (None: unbounded), and which budget bounds it."""
    bounds = []
    if account.mode == Account.Mode.PREPAID:
        bounds.append((account.credit - account.reserved, "organization_credit"))
    if account.monthly_limit is not None:
        spent = account.period_spent if account.period == period else 0
        bounds.append((account.monthly_limit - spent - account.reserved, "organization_monthly_limit"))
    if not bounds:
        return None, ""
    return min(bounds)


def top_up(
    *,
    hold_id: str,
    organization_id: int,
    api_key_id: str | None,
    key_limited: bool,
    shortfall: int,
    desired: int,
    share: int,
    ttl_seconds: int,
) -> int:
    """Add to a bulk hold (made on first use) at least `shortfall` and at most `desired`, never more
    than 1/`share` of what the budgets have left beyond the shortfall, so that other processes of
    the organization find money too. Raises InsufficientQuota (naming the budget) when even the
    shortfall does not fit, HoldLost when the hold was closed or reaped meanwhile. Returns what was
    added. Lock order: the hold's row, the account, the key's limit."""
    ensure_account(organization_id)
    now = timezone.now()
    period = period_of(now)
    with transaction.atomic():
        row, created = Reservation.all_orgs.select_for_update().get_or_create(
            request_id=hold_id,
            defaults={
                "organization_id": organization_id,
                "api_key_id": api_key_id,
                "amount": 0,
                "key_limited": key_limited,
                "expires_at": now + timedelta(seconds=ttl_seconds),
            },
        )
        if row.closed or (not created and row.expires_at <= now):
            raise HoldLost(hold_id)
        account = Account.all_orgs.select_for_update().get(organization_id=organization_id)
        available, budget = _available(account, period)
        limit = (
            KeySpendLimit.all_orgs.select_for_update().filter(api_key_id=api_key_id).first() if key_limited else None
        )
        if limit is not None:
            key_spent = limit.period_spent if limit.period == period else 0
            key_left = limit.monthly_limit - key_spent - limit.reserved
            if available is None or key_left < available:
                available, budget = key_left, "api_key_monthly_limit"
        if available is not None and available < shortfall:
            raise _refusal(budget)
        grant = desired
        if available is not None:
            grant = max(shortfall, min(desired, shortfall + (available - shortfall) // share))
        Account.all_orgs.filter(organization_id=organization_id).update(
            reserved=F("reserved") + grant,
            period_spent=_spent_this_period(period),
            alerted_percent=_alerted_this_period(period),
            period=period,
        )
        if limit is not None:
            KeySpendLimit.all_orgs.filter(pk=limit.pk).update(
                reserved=F("reserved") + grant,
                period_spent=_spent_this_period(period),
                alerted_percent=_alerted_this_period(period),
                period=period,
            )
        Reservation.all_orgs.filter(pk=row.pk).update(
            amount=F("amount") + grant,
            key_limited=limit is not None,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
    return grant


def _refusal(budget: str) -> InsufficientQuota:
    if budget == "api_key_monthly_limit":
        return InsufficientQuota(
            budget, "This API key has reached its monthly spend limit. Raise the key's limit or use another key."
        )
    if budget == "organization_credit":
        return InsufficientQuota(
            budget,
            "You exceeded your current quota: the organization's credit balance cannot cover this request. "
            "Add credit to continue.",
        )
    return InsufficientQuota(
        "organization_monthly_limit",
        "You exceeded your current quota: the organization has reached its monthly spend limit. "
        "An owner can raise the limit.",
    )


def shrink(hold_id: str, by: int, *, ttl_seconds: int, close: bool = True) -> int:
    """Give back `by` of a bulk hold: its unused part. Closing it (its process will no longer draw
    from it), the rest covers its requests' rows still to be settled, and the row goes once they
    are. Returns what was given back."""
    now = timezone.now()
    with transaction.atomic():
        row = Reservation.all_orgs.select_for_update().filter(request_id=hold_id).first()
        if row is None:
            return 0
        back = max(0, min(by, row.amount - row.spent))
        if close and row.amount - back <= row.spent:
            row.delete()
        else:
            Reservation.all_orgs.filter(pk=row.pk).update(
                amount=F("amount") - back, closed=close, expires_at=now + timedelta(seconds=ttl_seconds)
            )
        keys = {str(row.api_key_id): [back, 0]} if row.key_limited and row.api_key_id else {}
        _apply({row.organization_id: [back, 0]}, keys, period_of(now))
    return back


def renew(hold_ids: list[str], *, ttl_seconds: int) -> set[str]:
    """Push back the expiry of these open bulk holds; returns those that still exist (a hold the
    reaper took while its process stalled is not among them)."""
    if not hold_ids:
        return set()
    live = Reservation.all_orgs.filter(request_id__in=hold_ids, closed=False)
    found = set(live.values_list("request_id", flat=True))
    live.filter(request_id__in=found).update(expires_at=timezone.now() + timedelta(seconds=ttl_seconds))
    return found
