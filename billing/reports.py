"""Usage and cost over time, in buckets, grouped: what the usage and cost APIs serve.

Exact at every moment: full hours come from the rollups plus the ledger rows not rolled up yet
(both read in one snapshot, see billing.rollups); a window's partial first and last hours, and
every minute bucket, come from the ledger itself, which for those is at most a day of rows. So no
query reads raw events for a long window, yet a request served a second ago is already counted.

Buckets are aligned to their width in UTC (minutes, hours, days from midnight); the first and the
last are clipped to the window [start, end).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour, TruncMinute

from billing.models import UsageEvent, UsageRollup
from billing.rollups import BATCH_ROUTE_PREFIX, SUMS, charged, meter_sums, unit_prices

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
DIMENSIONS = ("model", "api_key_id", "endpoint_id", "batch")  # batch: whether a Batch API request
COMPLETION_ROUTES = ("chat.completions", "completions", "responses", "batch.chat.completions", "batch.completions")
EMBEDDING_ROUTES = ("embeddings", "batch.embeddings")
DEDICATED_ROUTE = "endpoints.dedicated"  # a dedicated endpoint's replica-minutes
HOUR = 3600


@dataclass(frozen=True)
class Query:
    organization_id: int
    start: int  # unix seconds, inclusive
    end: int  # exclusive
    width: int  # seconds: 60, 3600 or 86400
    group_by: tuple[str, ...] = ()
    routes: tuple[str, ...] | None = None  # None: every route
    models: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()


def _floor(ts: int, width: int) -> int:
    return ts - ts % width


def _ceil(ts: int, width: int) -> int:
    return -(-ts // width) * width


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def bucket_starts(start: int, end: int, width: int) -> list[int]:
    return list(range(_floor(start, width), end, width)) if end > start else []


@contextmanager
def _one_snapshot():
    """A rollup pass moves rows from 'not rolled up' into a rollup in one transaction; reading both
    in one snapshot sees each row exactly once (SQLite's transactions are snapshots already)."""
    fresh = not connection.in_atomic_block  # inside a caller's transaction, its snapshot rules
    with transaction.atomic():
        if fresh and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def sums(query: Query) -> dict[int, dict[tuple, list[int]]]:
    """bucket start (unix seconds) -> group (values of query.group_by) -> SUMS."""
    result: dict[int, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0] * len(SUMS)))
    if query.end <= query.start:
        return result

    def add(ts: int, group: tuple, values) -> None:
        row = result[_floor(ts, query.width)][group]
        for i, value in enumerate(values):
            row[i] += value

    with _one_snapshot():
        if query.width >= HOUR:
            full_from, full_to = _ceil(query.start, HOUR), _floor(query.end, HOUR)
        else:
            full_from = full_to = query.start  # minute buckets: no rollups
        if full_from < full_to:
            for ts, group, values in _from_rollups(query, full_from, full_to):
                add(ts, group, values)
        for ts, group, values in _from_ledger(query, full_from, full_to):
            add(ts, group, values)
    return result


def _filters(query: Query) -> Q:
    q = Q(organization_id=query.organization_id)
    if query.routes is not None:
        q &= Q(route__in=query.routes)
    if query.models:
        q &= Q(model__in=query.models)
    return q


def _with_batch(rows, query: Query):
    return rows.annotate(batch=Q(route__startswith=BATCH_ROUTE_PREFIX)) if "batch" in query.group_by else rows


def _from_rollups(query: Query, start: int, end: int):
    rows = _with_batch(UsageRollup.all_orgs.filter(_filters(query), hour__gte=_at(start), hour__lt=_at(end)), query)
    if query.api_key_ids:
        rows = rows.filter(api_key_id__in=query.api_key_ids)
    for row in rows.values("hour", *query.group_by).annotate(*[Sum(name) for name in SUMS]).order_by():
        group = tuple(_plain(d, row[d]) for d in query.group_by)
        yield int(row["hour"].timestamp()), group, [row[f"{n}__sum"] for n in SUMS]


def _from_ledger(query: Query, full_from: int, full_to: int):
    """Ledger rows in the window outside [full_from, full_to), and those inside not rolled up yet."""
    rows = UsageEvent.all_orgs.filter(_filters(query), created_at__gte=_at(query.start), created_at__lt=_at(query.end))
    if full_from < full_to:
        rows = rows.filter(Q(rolled_up=False) | Q(created_at__lt=_at(full_from)) | Q(created_at__gte=_at(full_to)))
    if query.api_key_ids:
        rows = rows.filter(api_key_id__in=query.api_key_ids)
    slot = TruncMinute("created_at") if query.width < HOUR else TruncHour("created_at")
    grouped = (
        _with_batch(rows, query)
        .annotate(slot=slot)
        .values("slot", "price_id", "route", *query.group_by)
        .annotate(
            requests=Count("id"),
            prompt=Sum("prompt_tokens"),
            cached=Sum("cached_tokens"),
            completion=Sum("completion_tokens"),
            training=Sum("training_tokens"),
            replicas=Sum("replica_minutes"),
        )
        .order_by()
    )
    found = list(grouped)
    prices = unit_prices(row["price_id"] for row in found)
    for row in found:
        group = tuple(_plain(d, row[d]) for d in query.group_by)
        values = meter_sums(
            row["requests"],
            row["prompt"],
            row["completion"],
            row["training"],
            row["replicas"],
            charged(prices[row["price_id"] or 0], row["route"]),
            row["cached"],
        )
        yield int(row["slot"].timestamp()), group, values


def _plain(dimension: str, value) -> str:
    """Ledger values as the rollups store them (a key's id as text, '' for none)."""
    if dimension == "batch":
        return bool(value)
    return "" if value is None else str(value)


def window_pages(start: int, end: int, width: int, limit: int, page: int | None) -> tuple[int, int, int | None]:
    """The part of [start, end) one page covers (limit buckets from `page`, a bucket start), and
    the next page's first bucket, or None."""
    first = max(_floor(start, width), page) if page is not None else _floor(start, width)
    stop = first + limit * width
    if stop >= end:
        return max(start, first), end, None
    return max(start, first), stop, stop
