"""Metering. The ledger write is idempotent; reserve/settle are the seam where budgets and
credits attach (a conditional debit before the call, the true cost after). Until billing lands
they reserve nothing and always allow."""

from __future__ import annotations

from dataclasses import dataclass

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
) -> None:
    UsageEvent.all_orgs.bulk_create(
        [
            UsageEvent(
                request_id=request_id,
                organization_id=organization_id,
                api_key_id=api_key_id,
                endpoint=endpoint,
                model=model,
                base_model=base_model,
                backend=backend,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                streamed=streamed,
                status_code=status_code,
                outcome=outcome,
                latency_ms=latency_ms,
                time_to_first_token_ms=time_to_first_token_ms,
            )
        ],
        ignore_conflicts=True,
    )
