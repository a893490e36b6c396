"""What billing shows, read the same way by the management API and the console."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from billing import money, pricing, reports
from billing.models import UsageEvent
from billing.rollups import SUMS
from catalog import selectors as catalog


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
    spend = totals["input_cost"] + totals["output_cost"] + totals["training_cost"] + totals["replica_cost"]
    return {"requests": requests, "tokens": tokens, "spend": spend}
