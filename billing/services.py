"""Metering. The ledger write is idempotent; reserve/settle are the seam where budgets and
credits attach (a conditional debit before the call, the true cost after). Until billing lands
they reserve nothing and always allow."""

from __future__ import annotations

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
    training_tokens: int = 0,
) -> None:
    """Append one ledger row; a second write for the same request id is ignored.

    One parameterised INSERT rather than the ORM: this runs once per API call on the gateway's
    hot path, and model instances plus SQL compilation cost more CPU than the database does.
    """
    values = {
        "request_id": request_id,
        "organization_id": organization_id,
        "api_key_id": api_key_id,
        "endpoint": endpoint,
        "model": model,
        "base_model": base_model,
        "backend": backend,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "streamed": streamed,
        "status_code": status_code,
        "outcome": outcome,
        "latency_ms": latency_ms,
        "time_to_first_token_ms": time_to_first_token_ms,
        "training_tokens": training_tokens,
        "created_at": timezone.now(),
    }
    meta = UsageEvent._meta
    # Each field prepares its own value for this database (UUIDs, datetimes, booleans).
    fields = [
        meta.get_field(name.removesuffix("_id") if name.endswith("_id") and name != "request_id" else name)
        for name in values
    ]
    params = [field.get_db_prep_save(value, connection) for field, value in zip(fields, values.values(), strict=True)]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(params))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES ({placeholders}) "  # noqa: S608
            "ON CONFLICT (request_id) DO NOTHING",
            params,
        )


def record_training(
    *,
    job_id: str,
    organization_id: int,
    api_key_id: str | None,
    model: str,
    base_model: str,
    trained_tokens: int,
    outcome: str,
    train_seconds: float,
) -> None:
    """The ledger row of a fine-tuning job that ended (succeeded, failed or cancelled): its trained
    tokens, once. Idempotent on the job id, so a retried finish writes nothing more."""
    record_usage(
        request_id=f"train:{job_id}",
        organization_id=organization_id,
        api_key_id=api_key_id,
        endpoint="fine_tuning.jobs",
        model=model,
        base_model=base_model,
        backend="",
        prompt_tokens=0,
        completion_tokens=0,
        training_tokens=trained_tokens,
        streamed=False,
        status_code=200,
        outcome=outcome,
        latency_ms=int(train_seconds * 1000),
        time_to_first_token_ms=None,
    )
