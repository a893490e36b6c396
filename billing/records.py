"""What one use of the platform cost, as billing takes it: a typed usage record. It travels
through the metering outbox as one JSON line (`as_line`) and becomes one ledger row
(billing.ledger), priced at the version it carries."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

from billing.ledger import price_fields
from billing.pricing import FREE, UnitPrice


@dataclass(frozen=True)
class UsageRecord:
    request_id: str  # unique: a second record with the same id is ignored
    organization_id: int
    route: str  # chat.completions | completions | fine_tuning.jobs | endpoints.dedicated
    model: str
    base_model: str
    price: UnitPrice = FREE  # the version chosen when the request started
    api_key_id: str | None = None
    endpoint_id: str = ""
    backend: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those the model server had cached
    completion_tokens: int = 0
    training_tokens: int = 0
    replica_minutes: int = 0
    streamed: bool = False
    status_code: int = 200
    outcome: str = "ok"
    latency_ms: int = 0
    time_to_first_token_ms: int | None = None
    created_at: float | datetime = field(default_factory=time.time)
    hold: str | None = None  # the bulk hold the request was admitted from (billing.holds)

    def cost(self) -> int:
        return self.price.cost(
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            training_tokens=self.training_tokens,
            replica_minutes=self.replica_minutes,
        )

    def as_line(self) -> dict:
        """The outbox's JSON form: plain values, the price as [version, input, output, training,
        replica minute] (None: free)."""
        line = {**asdict(self), "price": price_fields(self.price)}
        if line["hold"] is None:
            del line["hold"]
        return line
