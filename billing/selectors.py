"""What billing shows, read the same way by the management API and the console."""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

from billing import money, pricing, reports
from billing.models import KeySpendLimit, Payment, PaymentCustomer, UsageEvent
from billing.rollups import SUMS
from catalog import selectors as catalog
from tenancy.models import APIKey
from tenancy.selectors import key_id

COSTS = ("input_cost", "cached_cost", "output_cost", "training_cost", "replica_cost")


def price_list(organization_id: int) -> list[dict]:
    """Every model the organization may call, with the price it pays now (its own negotiated price,
    or the list price; a fine-tuned model without a price of its own at its base model's)."""
    rows = [
        {"model": m.pk, "base_model": None, **pricing.current(organization_id, m.pk).public()}
        for m in catalog.visible_base_models(organization_id)
    ]
    rows += [
        {
            "model": m.pk,
            "base_model": m.base_model_id,
            **pricing.current(organization_id, m.pk, m.base_model_id).public(),
        }
        for m in catalog.fine_tuned_models(organization_id)
    ]
    return rows


def request_usage(organization_id: int, request_id: str, api_key_id=None) -> dict | None:
    """One request's ledger row as the console shows it (None until it has landed), limited to a
    key's own requests when `api_key_id` is given."""
    rows = UsageEvent.all_orgs.filter(organization_id=organization_id, request_id=request_id)
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    row = rows.first()
    if row is None:
        return None
    return {
        "request_id": row.request_id,
        "model": row.model,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost": money.exact(row.cost),
        "currency": money.currency(),
        "latency_ms": row.latency_ms,
        "time_to_first_token_ms": row.time_to_first_token_ms,
    }


def today(organization_id: int, now: datetime | None = None) -> dict:
    """Since midnight UTC: completion requests and tokens, and spend over every route (exact)."""
    now = now or timezone.now()
    start = int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    end = int(now.timestamp()) + 1
    found = reports.sums(reports.Query(organization_id, start, end, reports.WIDTHS["1d"]))
    totals = dict.fromkeys(SUMS, 0)
    completions = reports.sums(
        reports.Query(organization_id, start, end, reports.WIDTHS["1d"], routes=reports.COMPLETION_ROUTES)
    )
    for bucket in found.values():
        for values in bucket.values():
            for name, value in zip(SUMS, values, strict=True):
                totals[name] += value
    requests = sum(values[0] for bucket in completions.values() for values in bucket.values())
    tokens = sum(values[1] + values[2] for bucket in completions.values() for values in bucket.values())
    spend = sum(totals[name] for name in COSTS)
    return {"requests": requests, "tokens": tokens, "spend": spend}


def usage_overview(organization_id: int, days: int = 30, now: datetime | None = None) -> dict:
    """The console's usage page: cost per day per model over the last `days` days (UTC), and the
    totals by model and by API key over the same window (requests, tokens, exact cost)."""
    now = now or timezone.now()
    end = int(now.timestamp()) + 1
    day = reports.WIDTHS["1d"]
    start = (end // day - days + 1) * day
    found = reports.sums(reports.Query(organization_id, start, end, day, group_by=("model", "api_key_id")))
    costs = COSTS
    index = {name: i for i, name in enumerate(SUMS)}

    def cost(values) -> int:
        return sum(values[index[name]] for name in costs)

    by_day: dict[str, dict[int, int]] = {}
    by_model: dict[str, list[int]] = {}
    by_key: dict[str, list[int]] = {}
    for bucket, groups in found.items():
        for (model, api_key), values in groups.items():
            by_day.setdefault(model, {}).setdefault(bucket, 0)
            by_day[model][bucket] += cost(values)
            for table, name in ((by_model, model), (by_key, api_key or "")):
                row = table.setdefault(name, [0, 0, 0])
                row[0] += values[index["requests"]]
                row[1] += values[index["prompt_tokens"]] + values[index["completion_tokens"]]
                row[2] += cost(values)
    buckets = list(range(start, end, day))
    names = {
        str(pk): name for pk, name in APIKey.all_orgs.filter(organization_id=organization_id).values_list("pk", "name")
    }
    return {
        "chart": {
            "type": "bar",
            "labels": [datetime.fromtimestamp(b, UTC).strftime("%m-%d") for b in buckets],
            "datasets": [
                {"label": model, "data": [float(money.to_decimal(per_day.get(b, 0))) for b in buckets]}
                for model, per_day in sorted(by_day.items())
            ],
            "y": money.currency().upper(),
            "stacked": True,
        },
        "by_model": [{"model": m, "requests": r, "tokens": t, "cost": c} for m, (r, t, c) in sorted(by_model.items())],
        "by_key": [
            {
                "key": names.get(key_id(k) or "", "a deleted key") if k else "no key",
                "requests": r,
                "tokens": t,
                "cost": c,
            }
            for k, (r, t, c) in sorted(by_key.items())
        ],
    }


def recent_requests(organization_id: int, limit: int = 50) -> list[UsageEvent]:
    """The latest ledger rows of the organization, with their key."""
    return list(
        UsageEvent.all_orgs.filter(organization_id=organization_id).select_related("api_key").order_by("-id")[:limit]
    )


def saved_card(organization_id: int) -> PaymentCustomer | None:
    """The organization's card with the configured payment provider, if one is saved."""
    return (
        PaymentCustomer.all_orgs.filter(organization_id=organization_id, provider=settings.PAYMENT_PROVIDER)
        .exclude(payment_method_id="")
        .first()
    )


def recent_payments(organization_id: int, limit: int = 10) -> list[Payment]:
    return list(Payment.all_orgs.filter(organization_id=organization_id).order_by("-created_at", "-id")[:limit])


def key_limits(organization_id: int) -> dict:
    """API key id -> its monthly spend limit as an exact decimal string."""
    return {
        row.api_key_id: money.exact(row.monthly_limit)
        for row in KeySpendLimit.all_orgs.filter(organization_id=organization_id)
    }
