"""The one contract between the gateway and billing: `admit` a request before anything is
forwarded, `settle` it once with what it used (or `cancel` it when nothing was).

admit prices the request (the version in effect now, which it is charged at whatever changes
later) and holds its worst-case cost against every budget that applies: drawn in memory from the
process's bulk hold (billing.holds), topped up in the database only when that lacks room. It
refuses with budgets.InsufficientQuota (a budget cannot cover it), MeteringUnavailable (usage
could not be recorded now), or DatabaseError (a budget applies and cannot be checked).

settle hands the usage record to the metering outbox, durable before it returns (the ledger row,
when drained, charges the cost to the hold it was admitted from), and frees in memory what the
request held beyond its cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from billing import budgets, outbox, pricing
from billing.holds import holds
from billing.pricing import UnitPrice
from billing.records import UsageRecord
from tenancy.detached import run_detached
from tenancy.errors import Unavailable


class MeteringUnavailable(Unavailable):
    """The usage of a request could not be recorded just now: admitting it would serve it unbilled."""

    def __init__(self):
        super().__init__(
            "Usage cannot be recorded right now, so this request cannot be admitted. Retry shortly.",
            "metering_unavailable",
            retry_after=5,
        )


@dataclass(frozen=True)
class Admission:
    request_id: str
    organization_id: int
    api_key_id: str | None
    price: UnitPrice
    held: int = 0  # the worst case held for it (nano-units); 0: no budget applies
    hold_id: str | None = None


async def admit(
    *,
    request_id: str,
    organization_id: int,
    api_key_id: str | None,
    model: str,
    base_model: str,
    prompt_tokens: int,
    completion_tokens: int,
    free: bool = False,
) -> Admission:
    """`prompt_tokens` and `completion_tokens` bound what the request can use (never under-counted)."""
    if not outbox.healthy():
        raise MeteringUnavailable()
    price = pricing.FREE if free else await pricing.acurrent(organization_id, model, base_model)
    worst = price.cost(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    admission = Admission(request_id, organization_id, api_key_id, price)
    if worst <= 0:
        return admission
    policy = budgets.cached_policy(organization_id) or await run_detached(budgets.policy, organization_id)
    if not policy.applies(api_key_id):
        return admission
    key = api_key_id if api_key_id in policy.limited_keys else None
    hold_id = holds.try_draw(organization_id, key, worst)
    if hold_id is None:
        drawing = asyncio.ensure_future(run_detached(holds.draw, organization_id, key, worst))
        try:
            hold_id = await asyncio.shield(drawing)
        except asyncio.CancelledError:  # the client left meanwhile: what the draw took goes back
            drawing.add_done_callback(lambda done: _give_back_drawn(done, worst))
            raise
    return replace(admission, held=worst, hold_id=hold_id)


def _give_back_drawn(done: asyncio.Future, amount: int) -> None:
    if not done.cancelled() and done.exception() is None:
        holds.give_back(done.result(), amount)


def settle(admission: Admission, record: UsageRecord) -> None:
    """The request ended having used what `record` says (priced at the admission's version)."""
    record = replace(record, price=admission.price, hold=admission.hold_id)
    try:
        outbox.append(record.as_line())
        outbox.nudge()
    finally:
        if admission.hold_id is not None:
            holds.finish(admission.hold_id, admission.held, record.cost())


def cancel(admission: Admission) -> None:
    """The request used nothing (no model server took it): what it held is free again."""
    if admission.hold_id is not None:
        holds.give_back(admission.hold_id, admission.held)
