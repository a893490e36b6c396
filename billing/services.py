"""Billing's writes: prices, usage records into the ledger (settling budgets with them), and
reservations against budgets."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing import alerts, budgets, ledger, money, outbox, pricing, reports
from billing.models import Account, KeySpendLimit, Price, Reservation
from catalog.models import BaseModel, FineTunedModel
from tenancy import audit
from tenancy.audit import Actor
from tenancy.models import APIKey
from tenancy.services import ServiceError

BillingError = ServiceError
UNCHANGED = object()
# A price may take effect "now" from a form filled in a minute ago, never earlier: the past is not repriced.
PRICE_BACKDATE_SLACK = timedelta(minutes=2)


def check_priceable(model: str, organization_id: int | None) -> None:
    """A price is for a catalog model; an organization's price for a fine-tuned model, for its own."""
    if model.startswith("ft:"):
        tuned = FineTunedModel.all_orgs.filter(pk=model).first()
        if tuned is None or (organization_id is not None and tuned.organization_id != organization_id):
            raise BillingError(f"The model '{model}' does not exist.", "model_not_found", "model")
    elif not BaseModel.objects.filter(pk=model).exists():
        raise BillingError(f"The model '{model}' does not exist.", "model_not_found", "model")


@transaction.atomic
def set_price(
    *,
    model: str,
    organization_id: int | None,
    input_per_million: Decimal | str,
    output_per_million: Decimal | str,
    training_per_million: Decimal | str,
    replica_minute: Decimal | str = "0",
    batch_input_per_million: Decimal | str | None = None,
    batch_output_per_million: Decimal | str | None = None,
    input_cached_per_million: Decimal | str | None = None,
    effective_from: datetime | None = None,
    note: str = "",
    actor: Actor,
) -> Price:
    """A new version of a model's price (the list price, or one organization's own), from
    `effective_from` (default: now) on. Earlier versions stay, so the past keeps its prices. The
    batch amounts left None charge a Batch API request half the synchronous ones."""
    now = timezone.now()
    effective_from = effective_from or now
    if effective_from < now - PRICE_BACKDATE_SLACK:
        raise BillingError("A price cannot take effect in the past.", "invalid_request", "effective_from")
    check_priceable(model, organization_id)
    try:
        per_token = {
            name: money.per_token_from_per_million(value)
            for name, value in (
                ("input_per_token", input_per_million),
                ("output_per_token", output_per_million),
                ("training_per_token", training_per_million),
            )
        }
        per_token["replica_minute"] = money.from_decimal(replica_minute)
        for name, value in (
            ("batch_input_per_token", batch_input_per_million),
            ("batch_output_per_token", batch_output_per_million),
            ("input_cached_per_token", input_cached_per_million),
        ):
            if value is not None:
                per_token[name] = money.per_token_from_per_million(value)
    except money.MoneyError as error:
        raise BillingError(str(error), "invalid_request", "price") from None
    if any(v < 0 for v in per_token.values()):
        raise BillingError("A price cannot be negative.", "invalid_request", "price")
    price = Price.objects.create(
        organization_id=organization_id,
        model=model,
        effective_from=effective_from,
        note=note,
        created_by=actor.user if getattr(actor.user, "pk", None) else None,
        **per_token,
    )
    audit.record(
        "billing.price_set",
        actor=actor,
        organization_id=organization_id,
        target=price,
        data={
            "model": model,
            "currency": money.currency(),
            "input_per_million": money.per_million(price.input_per_token),
            "output_per_million": money.per_million(price.output_per_token),
            "training_per_million": money.per_million(price.training_per_token),
            "replica_minute": money.exact(price.replica_minute),
            "batch_input_per_million": money.per_million(price.batch_amounts[0]),
            "batch_output_per_million": money.per_million(price.batch_amounts[1]),
            "input_cached_per_million": money.per_million(price.cached_amount),
            "effective_from": effective_from.isoformat(),
        },
    )
    transaction.on_commit(pricing.forget)
    return price


@transaction.atomic
def configure_account(
    organization_id: int,
    *,
    mode: str | None = None,
    monthly_limit: Decimal | str | object | None = UNCHANGED,
    actor: Actor,
) -> Account:
    """An operator's or owner's change to how an organization pays: its mode, and its monthly
    spend limit (None: no limit; UNCHANGED, the default, leaves it as it is)."""
    budgets.ensure_account(organization_id)
    account = Account.all_orgs.select_for_update().get(organization_id=organization_id)
    changed: dict = {}
    if mode is not None:
        if mode not in Account.Mode.values:
            raise BillingError(f"Unknown billing mode '{mode}'.", "invalid_request", "mode")
        account.mode, changed["mode"] = mode, mode
    if monthly_limit is not UNCHANGED:
        try:
            account.monthly_limit = None if monthly_limit is None else money.from_decimal(monthly_limit)
        except money.MoneyError as error:
            raise BillingError(str(error), "invalid_request", "monthly_limit") from None
        if account.monthly_limit is not None and account.monthly_limit < 0:
            raise BillingError("A limit cannot be negative.", "invalid_request", "monthly_limit")
        changed["monthly_limit"] = None if monthly_limit is None else str(monthly_limit)
    account.save()
    audit.record("billing.account_changed", actor=actor, organization_id=organization_id, target=account, data=changed)
    transaction.on_commit(budgets.forget)
    return account


@transaction.atomic
def set_key_spend_limit(organization_id: int, api_key_id: str, monthly_limit: Decimal | str | None, *, actor: Actor):
    """A monthly spend limit on one of the organization's keys (None removes it)."""
    key = APIKey.all_orgs.filter(pk=api_key_id, organization_id=organization_id).first()
    if key is None:
        raise BillingError("No such API key.", "not_found", "api_key")
    if monthly_limit is None:
        KeySpendLimit.all_orgs.filter(api_key=key).delete()
    else:
        try:
            limit = money.from_decimal(monthly_limit)
        except money.MoneyError as error:
            raise BillingError(str(error), "invalid_request", "monthly_limit") from None
        if limit < 0:
            raise BillingError("A limit cannot be negative.", "invalid_request", "monthly_limit")
        KeySpendLimit.all_orgs.update_or_create(
            api_key=key,
            defaults={"organization_id": organization_id, "monthly_limit": limit},
            create_defaults={
                "organization_id": organization_id,
                "monthly_limit": limit,
                "period": budgets.period_of(timezone.now()),
            },
        )
    audit.record(
        "billing.key_limit_set",
        actor=actor,
        organization_id=organization_id,
        target=key,
        data={"monthly_limit": None if monthly_limit is None else str(monthly_limit)},
    )
    transaction.on_commit(budgets.forget)


@transaction.atomic
def grant_credits(organization_id: int, amount: Decimal | str, *, reason: str, actor: Actor) -> Account:
    """Add (or, negative, take back) prepaid credit, audited."""
    try:
        nanos = money.from_decimal(amount)
    except money.MoneyError as error:
        raise BillingError(str(error), "invalid_request", "amount") from None
    budgets.ensure_account(organization_id)
    Account.all_orgs.filter(organization_id=organization_id).update(credit=F("credit") + nanos)
    account = Account.all_orgs.get(organization_id=organization_id)
    audit.record(
        "billing.credits_granted",
        actor=actor,
        organization_id=organization_id,
        target=account,
        data={"amount": str(amount), "currency": money.currency(), "reason": reason, "credit_after": account.credit},
    )
    return account


def reserve(
    *, request_id: str, organization_id: int, api_key_id: str | None, amount: int, ttl_seconds: int | None = None
) -> budgets.Hold:
    """Hold a request's worst-case cost (nano-units) against the budgets that apply; raises
    budgets.InsufficientQuota naming the one that cannot cover it."""
    return budgets.reserve(
        request_id=request_id,
        organization_id=organization_id,
        api_key_id=api_key_id,
        amount=amount,
        ttl_seconds=ttl_seconds or settings.BILLING_RESERVATION_TTL_SECONDS,
    )


def release(hold: budgets.Hold) -> None:
    """Give back a reservation whose work used nothing."""
    if hold.amount:
        budgets.release([hold.request_id])


def record_usage(**record) -> bool:
    """Write one usage record into the ledger now (inside the caller's transaction, if any); a
    second write for the same request id is ignored. Returns whether this call wrote it."""
    record.setdefault("created_at", timezone.now())
    return bool(_ingest_and_settle([record]))


def meter(record: dict) -> None:
    """Hand a finished request's usage record to the outbox: durable once this returns, in the
    ledger within METERING_DRAIN_SECONDS while the database is up, later if it is not."""
    outbox.append(record)
    outbox.nudge()


def ingest_usage(records: list[dict]) -> list[dict]:
    """Records into the ledger, once each, and the budgets settled for those written now, in one
    transaction: a reservation is released and its cost charged exactly once (what the outbox
    drains through)."""
    try:
        return _ingest_and_settle(records)
    except IntegrityError:
        pass
    # A record the ledger refuses (its organization or key was deleted since) must not hold back the
    # others: one at a time, and those refused are set aside with the reason.
    written = []
    for record in records:
        try:
            written += _ingest_and_settle([record])
        except IntegrityError as error:
            outbox.reject(record, str(error))
    return written


def _ingest_and_settle(records: list[dict]) -> list[dict]:
    with transaction.atomic():
        written = ledger.ingest(records)
        budgets.settle(written)
    return written


def drain_outbox() -> int:
    """Move every complete spooled record of this host into the ledger; returns how many."""
    return outbox.drain(ingest_usage)


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
    tokens, once, at the base model's training price in effect now — but never more than the job
    held when it was created (its estimate, with the reference tokenizer, at that day's price): the
    tokens beyond what the hold covers are not billed. Idempotent on the job id, so a retried finish
    writes nothing more."""
    price = pricing.current(organization_id, base_model)
    request_id = f"train:{job_id}"
    held = Reservation.all_orgs.filter(request_id=request_id).values_list("amount", flat=True).first()
    billed = trained_tokens
    if held is not None and price.training and billed * price.training > held:
        billed = held // price.training
    record_usage(
        request_id=request_id,
        organization_id=organization_id,
        api_key_id=api_key_id,
        route="fine_tuning.jobs",
        model=model,
        base_model=base_model,
        training_tokens=billed,
        price=ledger.price_fields(price),
        status_code=200,
        outcome=outcome,
        latency_ms=int(train_seconds * 1000),
    )


def record_replica_minutes(
    *,
    endpoint_id: str,
    organization_id: int,
    model: str,
    base_model: str,
    replica_minutes: int,
    start: datetime,
) -> bool:
    """The ledger row of a dedicated endpoint's time: replica-minutes from `start` on, at the
    replica-minute price in effect at `start`. Idempotent on the endpoint and start minute, so a
    metering pass that is retried or runs twice bills once."""
    price = pricing.current(organization_id, model, base_model, at=start)
    return record_usage(
        request_id=f"replicas:{endpoint_id}:{int(start.timestamp())}",
        organization_id=organization_id,
        route=reports.DEDICATED_ROUTE,
        endpoint_id=endpoint_id,
        model=model,
        base_model=base_model,
        replica_minutes=replica_minutes,
        price=ledger.price_fields(price),
        status_code=200,
        outcome="ok",
        latency_ms=0,
        created_at=start,
    )


def replica_minute_price(organization_id: int, model: str, base_model: str) -> int:
    return pricing.current(organization_id, model, base_model).replica_minute


def shortfall(organization_id: int, amount: int) -> budgets.InsufficientQuota | None:
    """Which budget could not cover `amount` more now (None: all can). A read, not a hold: for
    spending that is metered after the fact, such as a dedicated endpoint's next minute."""
    return budgets.shortfall(organization_id, amount)


def notify(organization_id: int, *, kind: str, level: str, title: str, body: str, data: dict, action: str) -> None:
    """A billing notice to an organization (console notification, audit row, email to owners and
    admins), inside the caller's transaction."""
    alerts.notify(organization_id, kind=kind, level=level, title=title, body=body, data=data, action=action)
