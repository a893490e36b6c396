"""What one gateway request used, and closing its books once: billing's admission is settled with
the usage record (into the metering outbox synchronously, before the response ends), or cancelled
when nothing reached a model server; the rate-limit correction runs in its own task, so a client
that disconnects (which cancels the request's task) cannot cancel it.

What is billed is what the model server generated, not what the gateway had read when the client
left (a slow reader leaves tokens in the replica's buffers and the sockets): a request whose
client left is settled in a task of its own, which asks our runtime for the request's real count
(/v1/abort_request), aborts it on vLLM (/inference/v1/abort_requests, by the request id the gateway
gave it) and reads the stream to the final usage vLLM then sends, or reads what another engine has
already sent; an engine that reports usage only at the end and never got there is billed the
completion cap it was sent."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from billing import admission as billing
from billing.models import UsageEvent
from billing.records import UsageRecord
from serving.gateway import ratelimit, upstream

log = logging.getLogger("serving.gateway")
_background: set[asyncio.Task] = set()
# After its client left, how long the gateway reads what an engine other than ours already sent.
BUFFERED_READ_SECONDS = 0.5
# After asking vLLM to abort, how long the gateway reads on to the stream's end and its usage.
ABORTED_READ_SECONDS = 10


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
    grant: ratelimit.Grant | None  # None: not rate limited (a batch's request)
    admission: billing.Admission | None  # None: booked by its caller (a batch's request)
    started: float = field(default_factory=time.perf_counter)
    wall_started: float = field(default_factory=time.time)
    backend: str = ""
    prompt_estimate: int = 0
    relayed: int = 0  # text pieces passed to the client: a floor for upstreams that report usage only at the end
    usage_reported: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # of the prompt, what the model server had cached (None: it did not say)
    first_token_at: float | None = None
    closed: bool = False
    endpoint_id: str = ""  # the published endpoint called, if any
    completion_cap: int = 0  # the max_tokens sent upstream
    replica: object = None  # the replica the request was sent to (routing.Replica), once sent
    abandoned: bool = False  # the client left; a task of its own closes the books

    def saw(self, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.usage_reported = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            self.completion_tokens = int(usage.get("completion_tokens") or self.completion_tokens)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                self.cached_tokens = min(max(0, details["cached_tokens"]), self.prompt_tokens)
            # A stream that outlives its minute carries its rate-limit reservation along.
            changes = self.grant and self.grant.carry_over(self.prompt_tokens + self.completion_tokens)
            if changes:
                spawn(ratelimit.apply(changes))

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def close(self, status_code: int, outcome: str) -> asyncio.Task | None:
        if self.closed:
            return None
        self.closed = True
        if not self.usage_reported:
            if outcome == UsageEvent.Outcome.CLIENT_DISCONNECTED and self.replica is not None:
                # The client left and the model server's count was never seen: it may have generated
                # everything it was allowed to (and a provider bills us for that).
                self.prompt_tokens = self.prompt_tokens or self.prompt_estimate
                self.completion_tokens = max(self.completion_tokens, self.completion_cap)
            elif self.relayed:
                # The upstream failed before reporting usage: bill what was relayed, never 0.
                self.prompt_tokens = self.prompt_tokens or self.prompt_estimate
                self.completion_tokens = max(self.completion_tokens, self.relayed)
        try:
            billing.settle(self.admission, self.record(status_code, outcome))
        except Exception:
            log.exception("could not record the usage of %s", self.request_id)
        return spawn(self._book())

    def abandon(self, response=None) -> asyncio.Task | None:
        """The client left before its answer ended. Nothing sent upstream yet: nothing was used.
        Otherwise learn what the model server generated, then close the books, in a task of its
        own (the request's task is being cancelled). `response` (the upstream's answer, if it
        came) is closed here, which stops decoding on any engine."""
        if self.closed or self.abandoned:
            return None
        if self.replica is None:
            return self.discard()
        self.abandoned = True
        return spawn(self._settle_abandoned(response))

    async def _settle_abandoned(self, response) -> None:
        try:
            replica = self.replica
            headers = {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}
            if replica.engine == "builtin":
                if response is not None:
                    upstream.abort(response)
                    response = None
                final = await upstream.abort_request(replica.url, headers, self.request_id)
                if final is not None:
                    self.saw(final)
            elif response is not None:
                # vLLM ends an aborted request's stream with its own count: abort it by the id we
                # gave it, and read the stream to its end; another engine's buffered events only.
                aborted = replica.engine == "vllm" and await upstream.abort_vllm_request(
                    replica.url, headers, self.request_id
                )
                await self._read_buffered(response, ABORTED_READ_SECONDS if aborted else BUFFERED_READ_SECONDS)
        except Exception:
            log.exception("could not learn what %s generated", self.request_id)
        finally:
            if response is not None:
                upstream.abort(response)
            self.close(499, UsageEvent.Outcome.CLIENT_DISCONNECTED)

    async def _read_buffered(self, response, seconds: float) -> None:
        """What the engine sent before the gateway closed the connection, for its usage."""
        try:
            async with asyncio.timeout(seconds):
                async for event in upstream.events(response):
                    if event == "[DONE]":
                        return
                    self.saw(event.get("usage"))
        except (TimeoutError, *upstream.STREAM_ERRORS):
            pass

    def discard(self) -> asyncio.Task | None:
        """Close the books of a request that never reached a model server (none was up to take it):
        what it held is free again, its rate-limit reservation is released, and no usage row is
        written, since nothing was used."""
        if self.closed:
            return None
        self.closed = True
        self.prompt_tokens = self.completion_tokens = 0
        billing.cancel(self.admission)
        return spawn(self._book())

    async def _book(self) -> None:
        try:
            await ratelimit.correct(self.grant, self.prompt_tokens + self.completion_tokens)
        except Exception:
            log.exception("could not correct the rate limit of %s", self.request_id)

    def record(self, status_code: int, outcome: str) -> UsageRecord:
        """The usage record of what the request used, as it ends now."""
        ended = time.perf_counter()
        ttft = None if self.first_token_at is None else int((self.first_token_at - self.started) * 1000)
        return UsageRecord(
            request_id=self.request_id,
            organization_id=self.principal.organization_id,
            api_key_id=self.principal.key_id,
            route=self.route,
            endpoint_id=self.endpoint_id,
            model=self.model,
            base_model=self.base_model,
            backend=self.backend,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens or 0,
            completion_tokens=self.completion_tokens,
            streamed=self.streamed,
            status_code=status_code,
            outcome=outcome,
            latency_ms=int((ended - self.started) * 1000),
            time_to_first_token_ms=ttft,
            created_at=self.wall_started,
        )
