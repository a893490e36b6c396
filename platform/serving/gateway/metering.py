"""What one gateway request used, and closing its books: the usage record goes into the metering
outbox synchronously, before the response ends (its ledger row settles the budget reservation when
drained); the rate-limit correction runs in its own task, so a client that disconnects (which
cancels the request's task) cannot cancel it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from billing import ledger
from billing import services as billing
from billing.budgets import Hold
from billing.pricing import UnitPrice
from serving.gateway import ratelimit
from tenancy.detached import run_detached

log = logging.getLogger("serving.gateway")
_background: set[asyncio.Task] = set()


def spawn(coroutine) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def drain() -> None:
    """Wait for pending ledger writes (tests, shutdown)."""
    while _background:
        await asyncio.gather(*list(_background), return_exceptions=True)


@dataclass
class Meter:
    request_id: str
    principal: object
    route: str  # the API route: chat.completions | completions
    model: str
    base_model: str
    streamed: bool
    grant: ratelimit.Grant
    hold: Hold
    price: UnitPrice
    started: float = field(default_factory=time.perf_counter)
    wall_started: float = field(default_factory=time.time)
    backend: str = ""
    prompt_estimate: int = 0
    relayed: int = 0  # text pieces passed to the client: a floor for upstreams that report usage only at the end
    usage_reported: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    closed: bool = False
    endpoint_id: str = ""  # the published endpoint called, if any

    def saw(self, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.usage_reported = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            self.completion_tokens = int(usage.get("completion_tokens") or self.completion_tokens)
            # A stream that outlives its minute carries its rate-limit reservation along.
            changes = self.grant.carry_over(self.prompt_tokens + self.completion_tokens)
            if changes:
                spawn(ratelimit.apply(changes))

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def close(self, status_code: int, outcome: str) -> asyncio.Task | None:
        if self.closed:
            return None
        self.closed = True
        if not self.usage_reported and self.relayed:
            # The upstream reports usage only at the end and never got there (a disconnect, an
            # error): bill what was relayed, never 0.
            self.prompt_tokens = self.prompt_tokens or self.prompt_estimate
            self.completion_tokens = max(self.completion_tokens, self.relayed)
        try:
            billing.meter(self._record(status_code, outcome, time.perf_counter()))
        except Exception:
            log.exception("could not spool the usage of %s", self.request_id)
        return spawn(self._book())

    def discard(self) -> asyncio.Task | None:
        """Close the books of a request that never reached a model server (none was up to take it):
        the rate-limit reservation and the billing reservation are released, and no usage row is
        written, since nothing was used."""
        if self.closed:
            return None
        self.closed = True
        self.prompt_tokens = self.completion_tokens = 0
        return spawn(self._release())

    async def _release(self) -> None:
        try:
            await ratelimit.correct(self.grant, 0)
            if self.hold.amount:
                await run_detached(billing.release, self.hold)
        except Exception:
            log.exception("could not release the reservations of %s", self.request_id)

    async def _book(self) -> None:
        try:
            await ratelimit.correct(self.grant, self.prompt_tokens + self.completion_tokens)
        except Exception:
            log.exception("could not correct the rate limit of %s", self.request_id)

    def _record(self, status_code: int, outcome: str, ended: float) -> dict:
        ttft = None if self.first_token_at is None else int((self.first_token_at - self.started) * 1000)
        return {
            "request_id": self.request_id,
            "organization_id": self.principal.organization_id,
            "api_key_id": self.principal.key_id,
            "route": self.route,
            "endpoint_id": self.endpoint_id,
            "model": self.model,
            "base_model": self.base_model,
            "backend": self.backend,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "price": ledger.price_fields(self.price),
            "streamed": self.streamed,
            "status_code": status_code,
            "outcome": outcome,
            "latency_ms": int((ended - self.started) * 1000),
            "time_to_first_token_ms": ttft,
            "created_at": self.wall_started,
        }
