"""An endpoint's metrics over the last hour and day, from the usage ledger: requests and tokens
per minute, latency and time to first token (p50, p95), the error rate, and (dedicated endpoints)
the replica-minutes billed."""

from __future__ import annotations

import math
from datetime import timedelta

from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from billing.models import UsageEvent
from billing.reports import COMPLETION_ROUTES, DEDICATED_ROUTE

WINDOWS = {"last_hour": timedelta(hours=1), "last_day": timedelta(days=1)}


def _percentile(rows, field: str, fraction: float) -> int | None:
    """The nearest-rank percentile, computed in the database (an ordered offset)."""
    present = rows.exclude(**{f"{field}__isnull": True})
    count = present.count()
    if not count:
        return None
    rank = max(0, min(count - 1, math.ceil(fraction * count) - 1))
    return present.order_by(field).values_list(field, flat=True)[rank]


def metrics(organization_id: int, endpoint_id: str, now=None) -> dict:
    now = now or timezone.now()
    found = {}
    for name, span in WINDOWS.items():
        ledger = UsageEvent.all_orgs.filter(
            organization_id=organization_id, endpoint_id=endpoint_id, created_at__gte=now - span, created_at__lt=now
        )
        rows = ledger.filter(route__in=COMPLETION_ROUTES)
        replica_minutes = ledger.filter(route=DEDICATED_ROUTE).aggregate(n=Sum("replica_minutes"))["n"] or 0
        totals = rows.aggregate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=500) | ~Q(outcome__in=["ok", "client_disconnected"])),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
        minutes = span.total_seconds() / 60
        requests = totals["requests"]
        tokens = (totals["prompt"] or 0) + (totals["completion"] or 0)
        found[name] = {
            "requests": requests,
            "requests_per_minute": round(requests / minutes, 3),
            "tokens": tokens,
            "tokens_per_minute": round(tokens / minutes, 3),
            "latency_ms": {"p50": _percentile(rows, "latency_ms", 0.5), "p95": _percentile(rows, "latency_ms", 0.95)},
            "time_to_first_token_ms": {
                "p50": _percentile(rows, "time_to_first_token_ms", 0.5),
                "p95": _percentile(rows, "time_to_first_token_ms", 0.95),
            },
            "error_rate": round(totals["errors"] / requests, 4) if requests else 0.0,
            "replica_minutes": replica_minutes,
        }
    return found


def series(organization_id: int, endpoint_id: str, now=None, minutes: int = 60) -> dict:
    """Per minute over the last `minutes`: requests, tokens, errors and the mean latency, oldest
    first, every minute present (0 where nothing was called): what the console charts."""
    now = (now or timezone.now()).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = now - timedelta(minutes=minutes)
    rows = (
        UsageEvent.all_orgs.filter(
            organization_id=organization_id,
            endpoint_id=endpoint_id,
            route__in=COMPLETION_ROUTES,
            created_at__gte=start,
            created_at__lt=now,
        )
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=500) | ~Q(outcome__in=["ok", "client_disconnected"])),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            latency=Avg("latency_ms"),
        )
        .order_by()
    )
    found = {int(row["minute"].timestamp()): row for row in rows}
    points = []
    for n in range(minutes):
        at = int((start + timedelta(minutes=n)).timestamp())
        row = found.get(at)
        points.append(
            {
                "minute": at,
                "requests": row["requests"] if row else 0,
                "tokens": (row["prompt"] or 0) + (row["completion"] or 0) if row else 0,
                "errors": row["errors"] if row else 0,
                "mean_latency_ms": round(row["latency"]) if row and row["latency"] is not None else None,
            }
        )
    return {"bucket_width": "1m", "points": points}
