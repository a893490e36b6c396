"""Hourly rollups of the ledger: what the usage and cost APIs and the monthly close read.

A pass takes ledger rows not yet rolled up (oldest first, in batches), adds them to their hour's
rollup rows and marks them rolled up, in one transaction. So at every moment each ledger row is
counted either in a rollup or as a raw row with `rolled_up` false, never both and never neither,
and a reader that sums the rollups and the raw rows not rolled up in one snapshot is exact, for
the current hour and for an event that arrived an hour late alike. No watermark, no recomputing.

Passes and monthly closes take turns on one lock row (RollupLock): a pass decides which month's
invoice counts an event (billing_month), and must not do that while the month is being closed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from billing.models import Invoice, Price, RollupLock, UsageEvent, UsageRollup

BATCH = 5000
GROUP = ["organization_id", "hour", "billing_month", "route", "model", "api_key_id", "endpoint_id", "price_version"]
SUMS = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "training_tokens",
    "input_cost",
    "output_cost",
    "training_cost",
    "replica_minutes",
    "replica_cost",
    "cached_tokens",  # of prompt_tokens; input_cost is what the others cost
    "cached_cost",
]


def month_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def take_turn() -> None:
    """Inside a transaction: wait for any other pass or close, then hold the turn until commit."""
    if not RollupLock.objects.filter(pk=1).update(taken_at=timezone.now()):
        # The migration makes the row; a database emptied since (a test's flush) lacks it.
        RollupLock.objects.get_or_create(pk=1)
        RollupLock.objects.filter(pk=1).update(taken_at=timezone.now())


BATCH_ROUTE_PREFIX = "batch."  # a Batch API request's ledger route: batch.chat.completions, ...


def unit_prices(versions) -> dict[int, tuple[int, ...]]:
    """Price id -> nano-units per input, output and training token, per replica-minute, per
    batch input and output token, and per cached input token (0 for free)."""
    found = {0: (0, 0, 0, 0, 0, 0, 0)}
    wanted = {v for v in versions if v}
    if wanted:
        for price in Price.objects.filter(pk__in=wanted):
            found[price.pk] = (
                price.input_per_token,
                price.output_per_token,
                price.training_per_token,
                price.replica_minute,
                *price.batch_amounts,
                price.cached_amount,
            )
    return found


def charged(price: tuple[int, ...], route: str) -> tuple[int, int, int, int, int]:
    """What a ledger row of `route` pays per unit of each meter, of its version's amounts
    (input, output, training, replica-minute, cached input): a batch request's tokens at the batch
    meter, its cached ones at the lower of the batch and cached amounts."""
    if route.startswith(BATCH_ROUTE_PREFIX):
        return price[4], price[5], price[2], price[3], min(price[4], price[6])
    return price[0], price[1], price[2], price[3], price[6]


def meter_sums(
    requests: int,
    prompt: int,
    completion: int,
    training: int,
    replica_minutes: int,
    price: tuple[int, int, int, int, int],
    cached: int = 0,
) -> list[int]:
    """Values in the order of SUMS; `cached` of the `prompt` tokens are charged at the cached amount."""
    costs = [(prompt - cached) * price[0], completion * price[1], training * price[2]]
    replicas = [replica_minutes, replica_minutes * price[3]]
    return [requests, prompt, completion, training, *costs, *replicas, cached, cached * price[4]]


def closed_months(organization_ids) -> dict[int, date]:
    """The last month each organization has an invoice for."""
    return dict(
        Invoice.all_orgs.filter(organization_id__in=organization_ids)
        .values("organization_id")
        .annotate(last=Max("period"))
        .values_list("organization_id", "last")
    )


def roll_up() -> int:
    """Roll up everything not yet rolled up; returns how many ledger rows were added."""
    total = 0
    while True:
        added = _roll_up_batch()
        total += added
        if added < BATCH:
            return total


@transaction.atomic
def _roll_up_batch() -> int:
    take_turn()
    events = list(
        UsageEvent.all_orgs.filter(rolled_up=False)
        .order_by("id")
        .values_list(
            "id",
            "organization_id",
            "created_at",
            "route",
            "model",
            "api_key_id",
            "endpoint_id",
            "price_id",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "training_tokens",
            "replica_minutes",
        )[:BATCH]
    )
    if not events:
        return 0
    prices = unit_prices(e[7] for e in events)
    closed = closed_months({e[1] for e in events})
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(SUMS))
    for _, org, created, route, model, key, endpoint, price, prompt, cached, completion, training, replicas in events:
        month = month_of(created)
        last_closed = closed.get(org)
        if last_closed is not None and month <= last_closed:
            month = next_month(last_closed)  # arrived after its month was invoiced: the next invoice counts it
        hour = created.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (org, hour, month, route, model, str(key) if key else "", endpoint or "", price or 0)
        sums = groups[key]
        per_unit = charged(prices[price or 0], route)
        for i, value in enumerate(meter_sums(1, prompt, completion, training, replicas, per_unit, cached)):
            sums[i] += value
    _add(groups)
    UsageEvent.all_orgs.filter(id__in=[e[0] for e in events]).update(rolled_up=True)
    return len(events)


def _add(groups: dict[tuple, list[int]]) -> None:
    """Upsert: add to the group's row, or create it (the same statement on PostgreSQL and SQLite)."""
    fields = {f.attname: f for f in UsageRollup._meta.concrete_fields}
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    columns = GROUP + SUMS
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    rows = list(groups.items())
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            params: list = []
            for key, sums in chunk:
                for name, value in zip(columns, (*key, *sums), strict=True):
                    params.append(fields[name].get_db_prep_save(value, connection))
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608 (names from the model)
                f"VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT ({', '.join(quote(c) for c in GROUP)}) DO UPDATE SET "
                + ", ".join(f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in SUMS),
                params,
            )
