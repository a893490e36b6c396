"""Writing usage records into the ledger: priced, in batches, exactly once per request id.

A usage record is a plain dict (it travels through the outbox as one JSON line): the request's
ids, meters and outcome, and the price version chosen when the request started, with its unit
prices, so that the cost is what the request was quoted even if a new price took effect since.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection, transaction

from billing.models import UsageEvent
from billing.pricing import UnitPrice

BATCH = 1000  # rows per INSERT statement

COLUMNS = [
    "request_id",
    "organization_id",
    "api_key_id",
    "route",
    "endpoint_id",
    "model",
    "base_model",
    "backend",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "training_tokens",
    "replica_minutes",
    "cost",
    "price_id",
    "streamed",
    "status_code",
    "outcome",
    "latency_ms",
    "time_to_first_token_ms",
    "created_at",
]
DEFAULTS = {
    "api_key_id": None,
    "endpoint_id": "",
    "backend": "",
    "prompt_tokens": 0,
    "cached_tokens": 0,
    "completion_tokens": 0,
    "training_tokens": 0,
    "replica_minutes": 0,
    "streamed": False,
    "time_to_first_token_ms": None,
    "price": None,
}


def price_fields(price: UnitPrice) -> list | None:
    """How a record carries its price version: [version, input, output, training, replica minute,
    cached input] or None (free)."""
    if price.version is None:
        return None
    return [price.version, price.input, price.output, price.training, price.replica_minute, price.input_cached]


def price_of(fields: list | None) -> UnitPrice:
    """A record's price back from its fields (spooled before the cached meter existed: five, and
    no cached tokens)."""
    if not fields:
        return UnitPrice(None, 0, 0, 0, 0)
    version, input_, output, training, *rest = fields
    replica = rest[0] if rest else 0
    cached = rest[1] if len(rest) > 1 else input_
    return UnitPrice(version, input_, output, training, replica, input_cached=cached)


def _row(record: dict) -> dict:
    record = {**DEFAULTS, **record}
    price = price_of(record["price"])
    created = record["created_at"]
    return {
        **{name: record[name] for name in COLUMNS if name in record},
        "cost": price.cost(
            prompt_tokens=record["prompt_tokens"],
            cached_tokens=record["cached_tokens"],
            completion_tokens=record["completion_tokens"],
            training_tokens=record["training_tokens"],
            replica_minutes=record["replica_minutes"],
        ),
        "price_id": price.version,
        "created_at": datetime.fromtimestamp(created, UTC) if isinstance(created, int | float) else created,
        "hold": record.get("hold"),  # not a column: which bulk hold the settle charges
    }


def _fields():
    meta = UsageEvent._meta
    by_column = {f.column: f for f in meta.concrete_fields}
    return [by_column[name] for name in COLUMNS]


def ingest(records: list[dict]) -> list[dict]:
    """Append the records to the ledger; those whose request id is there already are skipped.
    Returns the ledger rows written now, as dicts with their cost (the caller settles those, in the
    same transaction).

    Multi-row INSERTs with ON CONFLICT DO NOTHING … RETURNING: one statement per BATCH rows, so a
    drained backlog goes in at thousands of rows per second, and a record replayed after a crash
    between the insert and the spool's deletion changes nothing.
    """
    if not records:
        return []
    fields = _fields()
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    written: list[dict] = []
    by_id = {}
    for record in records:
        if record["request_id"] not in by_id:  # a duplicate within one batch counts once
            by_id[record["request_id"]] = _row(record)
    unique = list(by_id.values())
    # Joins the caller's transaction when there is one (no savepoint: two round trips fewer per drain).
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        for start in range(0, len(unique), BATCH):
            chunk = unique[start : start + BATCH]
            params: list = []
            for row in chunk:
                params += [f.get_db_prep_save(row[f.column], connection) for f in fields]
            one = "(" + ", ".join(["%s"] * len(fields)) + ")"
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))} "  # noqa: S608
                "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                params,
            )
            written += [by_id[request_id] for (request_id,) in cursor.fetchall()]
    return written
