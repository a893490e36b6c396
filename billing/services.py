"""Metering. The ledger write is idempotent; reserve/settle are the seam where budgets and
credits attach (a conditional debit before the call, the true cost after). Until billing lands
they reserve nothing and always allow."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from billing.models import UsageEvent


@dataclass(frozen=True)
class Reservation:
    organization_id: int
    api_key_id: str | None
    model: str
    estimated_tokens: int


def reserve(*, organization_id: int, api_key_id: str | None, model: str, estimated_tokens: int) -> Reservation:
    """Called before forwarding a request. Will raise when a budget cannot cover the estimate."""
    return Reservation(organization_id, api_key_id, model, estimated_tokens)


def settle(reservation: Reservation, *, prompt_tokens: int, completion_tokens: int) -> None:
    """Called once the call ended, whatever its outcome, with the tokens actually used."""


_COLUMNS = (
    "request_id",
    "organization_id",
    "api_key_id",
    "endpoint",
    "model",
    "base_model",
    "backend",
    "prompt_tokens",
    "completion_tokens",
    "streamed",
    "status_code",
    "outcome",
    "latency_ms",
    "time_to_first_token_ms",
    "created_at",
)


def record_usage(
    *,
    request_id: str,
    organization_id: int,
    api_key_id: str | None,
    endpoint: str,
    model: str,
    base_model: str,
    backend: str,
    prompt_tokens: int,
    completion_tokens: int,
    streamed: bool,
    status_code: int,
    outcome: str,
    latency_ms: int,
    time_to_first_token_ms: int | None,
) -> None:
    """Append one ledger row; a second write for the same request id is ignored.

    One parameterised INSERT rather than the ORM: this runs once per API call on the gateway's
    hot path, and model instances plus SQL compilation cost more CPU than the database does.
    """
    table = UsageEvent._meta.db_table
    key = None if api_key_id is None else uuid.UUID(str(api_key_id))
    values = (
        request_id,
        organization_id,
        key.hex if connection.vendor == "sqlite" and key else key,
        endpoint,
        model,
        base_model,
        backend,
        prompt_tokens,
        completion_tokens,
        streamed,
        status_code,
        outcome,
        latency_ms,
        time_to_first_token_ms,
        timezone.now(),
    )
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(table)} ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "  # noqa: S608
            "ON CONFLICT (request_id) DO NOTHING",
            values,
        )
