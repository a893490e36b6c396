"""The usage and cost APIs in OpenAI's shapes, served twice: under /v1/organization/ for an API key
(scope billing:read) and under /api/orgs/{org}/billing/ for the console.

GET …/usage/completions: tokens and requests of chat and text completions per bucket.
GET …/usage/embeddings: input tokens and requests of embeddings per bucket.
GET …/costs: money per bucket, over every route (fine-tuning included). `amount.value` is a JSON
number as OpenAI sends it; `amount.exact` (our extension) is the same amount as an exact decimal
string, which is what to add up.

Parameters as OpenAI's: start_time (required, unix seconds, inclusive), end_time (exclusive,
default now), bucket_width 1m | 1h | 1d (default 1d), group_by (model, api_key_id, and our
endpoint_id and batch (true for Batch API requests, whose tokens are a line item of their own:
"model, batch input"); costs also line_item; project_id is accepted and always null: an organization is one
project here), models and api_key_ids filters, limit (buckets per page) and page (next_page).
"""

from __future__ import annotations

import dataclasses
import time

from rest_framework import exceptions

from billing import money, reports
from billing.rollups import SUMS
from tenancy import selectors

LATEST_TIME = 253402300799  # 9999-12-31T23:59:59Z: what a date holds
TIME = {"type": "integer", "minimum": 0, "maximum": LATEST_TIME}  # start_time and end_time, in the document
MOST_BUCKETS = 1440  # a page's most (of 1m buckets: a day)
LIMIT = {"type": "integer", "minimum": 1, "maximum": MOST_BUCKETS}
PAGE = {"type": "string", "pattern": "^[0-9]{1,12}$", "description": "next_page of the previous page."}
KEY_IDS = {"type": "string", "format": "uuid"}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_DAY_LIMITS = (7, 180)
KNOWN = {"start_time", "end_time", "bucket_width", "group_by", "limit", "page", "models", "api_key_ids"}
# meter, index of its quantity in SUMS, index of its cost in SUMS
METERS = (("input", 1, 4), ("cached input", 9, 10), ("output", 2, 5), ("training", 3, 6), ("replica_minutes", 7, 8))


def _invalid(param: str, message: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({param: [message]})


def _list(params, name: str) -> list[str]:
    values = params.getlist(name) + params.getlist(f"{name}[]")
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _integer(params, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _invalid(name, f"'{raw}' is not an integer.") from None


def _page_token(raw: str | None) -> int | None:
    """next_page is the first bucket of the next page (unix seconds): any such number is a page,
    clamped to the query's range, so a cursor cannot be invalid, only past the end."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise _invalid("page", "This is not a page cursor from next_page.")
    return int(raw)


def _next_token(bucket: int | None) -> str | None:
    return None if bucket is None else str(bucket)


ROUTES = {"completions": reports.COMPLETION_ROUTES, "embeddings": reports.EMBEDDING_ROUTES}


def parse(
    params, organization_id: int, *, costs: bool, usage_of: str = "completions"
) -> tuple[reports.Query, int, int | None, bool]:
    """The query, the page's bucket limit, the page cursor and whether line items were asked for."""
    unknown = sorted({name.removesuffix("[]") for name in params} - KNOWN)
    if unknown:
        raise _invalid(unknown[0], f"Unrecognized parameter: {unknown[0]}.")
    start = _integer(params, "start_time")
    if start is None:
        raise _invalid("start_time", "start_time is required (unix seconds, inclusive).")
    end = _integer(params, "end_time", int(time.time()))
    for name, value in (("start_time", start), ("end_time", end)):
        if not 0 <= value <= LATEST_TIME:
            raise _invalid(name, f"Times are unix seconds from 0 to {LATEST_TIME} (9999-12-31), got {value}.")
    end = max(end, start)  # a range that ends before it starts holds no time: an empty page, as for any empty range
    width_name = params.get("bucket_width") or "1d"
    if width_name not in reports.WIDTHS:
        raise _invalid("bucket_width", f"bucket_width is one of 1m, 1h, 1d (got '{width_name}').")
    default, most = COSTS_DAY_LIMITS if costs and width_name == "1d" else LIMITS[width_name]
    limit = _integer(params, "limit", default)
    if not 1 <= limit <= MOST_BUCKETS:
        raise _invalid("limit", f"limit is 1 to {MOST_BUCKETS} buckets (got {limit}).")
    limit = min(limit, most)  # a page of a wider bucket holds fewer; next_page goes on from there
    allowed = set(reports.DIMENSIONS) | {"project_id"} | ({"line_item"} if costs else set())
    group_by = _list(params, "group_by")
    for name in group_by:
        if name not in allowed:
            raise _invalid("group_by", f"group_by takes {', '.join(sorted(allowed))} (got '{name}').")
    line_items = "line_item" in group_by
    # A line item is a model's meter, and batch tokens are a meter of their own.
    dimensions = [d for d in reports.DIMENSIONS if d in group_by or (d in ("model", "batch") and line_items)]
    keys = []
    for raw in params.getlist("api_key_ids") + params.getlist("api_key_ids[]"):  # each a key id, as documented
        if selectors.key_id(raw) is None:
            raise _invalid("api_key_ids", f"'{raw}' is not an API key id.")
        keys.append(selectors.key_id(raw))
    query = reports.Query(
        organization_id=organization_id,
        start=start,
        end=end,
        width=reports.WIDTHS[width_name],
        group_by=tuple(dimensions),
        routes=None if costs else ROUTES[usage_of],
        models=tuple(_list(params, "models")),
        api_key_ids=tuple(keys),
    )
    return query, limit, _page_token(params.get("page")), line_items


def _page(query: reports.Query, limit: int, page: int | None, results) -> dict:
    start, end, next_bucket = reports.window_pages(query.start, query.end, query.width, limit, page)
    window = dataclasses.replace(query, start=start, end=end)
    found = reports.sums(window)
    data = []
    for bucket in reports.bucket_starts(start, end, query.width):
        groups = found.get(bucket, {})
        data.append(
            {
                "object": "bucket",
                "start_time": max(bucket, start),
                "end_time": min(bucket + query.width, end),
                "results": [item for group in sorted(groups) for item in results(window, group, groups[group])],
            }
        )
    return {"object": "page", "data": data, "has_more": next_bucket is not None, "next_page": _next_token(next_bucket)}


def _dimensions(query: reports.Query, group: tuple) -> dict:
    values = dict(zip(query.group_by, group, strict=True))
    fields = {"project_id": None, "api_key_id": values.get("api_key_id") or None, "model": values.get("model")}
    if "endpoint_id" in query.group_by:
        fields["endpoint_id"] = values["endpoint_id"] or None
    if "batch" in query.group_by:
        fields["batch"] = values["batch"]
    return fields


def usage_page(query: reports.Query, limit: int, page: int | None, usage_of: str = "completions") -> dict:
    def results(window, group, sums):
        values = dict(zip(SUMS, sums, strict=True))
        common = {"num_model_requests": values["requests"], "user_id": None, **_dimensions(window, group)}
        if usage_of == "embeddings":
            return [
                {"object": "organization.usage.embeddings.result", "input_tokens": values["prompt_tokens"], **common}
            ]
        return [
            {
                "object": "organization.usage.completions.result",
                "input_tokens": values["prompt_tokens"],
                "output_tokens": values["completion_tokens"],
                "input_cached_tokens": values["cached_tokens"],
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "batch": None,
                **common,
            }
        ]

    return _page(query, limit, page, results)


def _amount(nanos: int) -> dict:
    return {"value": float(money.to_decimal(nanos)), "currency": money.currency(), "exact": money.exact(nanos)}


def _line_item(result: dict, meter: str) -> str:
    batch = "batch " if result.get("batch") and meter in ("input", "cached input", "output") else ""
    return f"{result['model']}, {batch}{meter}"


def costs_page(query: reports.Query, limit: int, page: int | None, line_items: bool) -> dict:
    def results(window, group, sums):
        base = {"object": "organization.costs.result", **_dimensions(window, group)}
        if not line_items:
            return [{**base, "amount": _amount(sum(sums[cost] for _, _, cost in METERS)), "line_item": None}]
        return [
            {**base, "amount": _amount(sums[cost]), "line_item": _line_item(base, meter)}
            for meter, quantity, cost in METERS
            if sums[quantity]
        ]

    return _page(query, limit, page, results)


def page(params, organization_id: int, *, costs: bool, usage_of: str = "completions") -> dict:
    """One page of either API, from the request's query parameters."""
    query, limit, cursor, line_items = parse(params, organization_id, costs=costs, usage_of=usage_of)
    return costs_page(query, limit, cursor, line_items) if costs else usage_page(query, limit, cursor, usage_of)
