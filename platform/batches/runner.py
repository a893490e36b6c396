"""The batch runner: the process that runs batches' requests on the pool's replicas.

It claims requests under a lease (batches.lifecycle), sends each to a replica the way the gateway
sends a synchronous call (the same validation, routing, cold start and answer assembly, so an
output line is the synchronous response), at priority 1 (`priority` in the body, as vLLM takes
it), so that the model servers let interactive requests go first. Each answer is recorded with
its ledger row at the batch price in one transaction. A request that no replica can take now, or
that a replica failed, is put back and retried later; the batch waits for capacity until its
window ends.

Any number of runners may run (on any host): the leases keep them off each other's requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import replace

import orjson
from django.conf import settings

from batches import lifecycle, selectors, services
from billing import pricing
from billing.models import UsageEvent
from serving.gateway import embeddings, inference, upstream
from serving.gateway.http import GatewayError
from serving.gateway.metering import Meter
from tenancy.detached import run_detached
from tenancy.errors import render

log = logging.getLogger("batches")
Outcome = UsageEvent.Outcome
RETRY_SECONDS = 10  # a request no replica could take, or a replica failed: tried again after this
MAX_FAILED_ATTEMPTS = 3  # server failures of one request before its line is a failure
IDLE_SECONDS = 0.5


class BatchMeter(Meter):
    """The gateway's meter for a batch's request: it follows what the replica reports, and the
    runner books it (with the answer, in one transaction) instead of the metering outbox."""

    status_code: int = 0
    outcome: str = ""
    free: bool = False  # a dedicated endpoint's call: paid by the replica-minute, metered but not priced

    def close(self, status_code: int, outcome: str):
        self.closed, self.status_code, self.outcome = True, status_code, outcome

    def discard(self):
        self.closed = True

    def abandon(self, response=None):
        if response is not None:
            upstream.abort(response)  # the runner is stopping: the replica stops decoding
        self.closed = True


class Retry(Exception):
    def __init__(self, counts: bool):
        self.counts = counts


def _meter(claim: lifecycle.Claim, principal, served: str, base_model: str) -> BatchMeter:
    route = "batch." + services.ENDPOINTS[claim.endpoint][0]
    return BatchMeter(claim.request_id, principal, route, served, base_model, False, None, None)


async def _generate(claim: lifecycle.Claim, principal) -> tuple[int, dict, BatchMeter | None]:
    route_name, kind = services.ENDPOINTS[claim.endpoint]
    route = await inference.route_for(principal, claim.body["model"], kind)
    if kind == "embedding":
        parsed = embeddings.parse(claim.body)
        route = await inference.serving_route(principal, parsed.model, route)
        meter = _meter(claim, principal, parsed.model, route.base_model)
        meter.prompt_estimate = embeddings.token_bound(parsed, route.context_length)
        status, payload = await embeddings.send(route, parsed, meter)
        return status, payload, meter
    planned = inference.plan(principal, route, claim.body, route_name)
    route = await inference.serving_route(principal, planned.checked.model, route)
    meter = _meter(claim, principal, planned.served, route.base_model)
    meter.prompt_estimate, meter.completion_cap = planned.prompt_estimate, planned.completion_bound
    meter.endpoint_id = route.endpoint.id if route.endpoint is not None else ""
    meter.free = route.endpoint is not None and route.endpoint.dedicated
    response = await inference.open_upstream(route, claim.endpoint, meter, planned.body_of("batch"))
    if response.status != 200:
        return response.status, await inference.error_of(response), meter
    answer = await inference.assemble(response, meter, planned.checked, route_name)
    return answer.status_code, orjson.loads(answer.content), meter


def _usage(claim: lifecycle.Claim, meter: BatchMeter | None, status: int) -> dict | None:
    """The ledger record of one answered request (the gateway meter's), priced at the batch price
    of the version in effect when the batch was created; None when no replica ran it."""
    if meter is None or meter.backend == "":
        return None
    price = pricing.current(claim.organization_id, meter.model, meter.base_model, at=claim.created_at)
    record = meter.record(status, meter.outcome or (Outcome.OK if status == 200 else Outcome.REJECTED))
    priced = replace(record, price=pricing.FREE if meter.free else price.for_batch(), hold=f"batch:{claim.batch_id}")
    return priced.as_line()


class Runner:
    def __init__(self, *, concurrency: int | None = None, owner: str | None = None):
        self.concurrency = concurrency or settings.BATCH_RUNNER_CONCURRENCY
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.running: dict[asyncio.Task, int] = {}  # task -> the request row it runs
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()  # a request ended: its place can be filled at once
        self._renewed = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        log.info("batch runner %s started (%d at a time)", self.owner, self.concurrency)
        try:
            while not self._stopping.is_set():
                busy = await self.step()
                if not busy:
                    # Until a request ends (its place is taken at once), a stop, or the next look.
                    self._freed.clear()
                    waits = [asyncio.ensure_future(e.wait()) for e in (self._stopping, self._freed)]
                    await asyncio.wait(waits, timeout=IDLE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                    for waiting in waits:
                        waiting.cancel()
        finally:
            for task in list(self.running):
                task.cancel()
            await asyncio.gather(*list(self.running), return_exceptions=True)
            await upstream.close_session()
            released = await run_detached(lifecycle.release_leases, self.owner)
            log.info("batch runner %s stopped (%d request(s) given back)", self.owner, released)

    def _ended(self, task: asyncio.Task) -> None:
        self.running.pop(task, None)
        self._freed.set()

    async def step(self) -> bool:
        """One pass: start validated batches, claim what there is room for, end batches that can
        end. Whether it found work."""
        for batch in await run_detached(selectors.validating):
            try:
                await services.start_validating(batch)
            except Exception:
                log.exception("could not start batch %s", batch.pk)
        if self.running and time.monotonic() - self._renewed > settings.BATCH_LEASE_SECONDS / 3:
            # Long generations keep their leases: no other runner (nor this one) takes them again.
            await run_detached(lifecycle.renew_leases, self.owner, list(self.running.values()))
            self._renewed = time.monotonic()
        claims = await run_detached(lifecycle.claim, self.owner, self.concurrency - len(self.running))
        for claim in claims:
            task = asyncio.get_running_loop().create_task(self.execute(claim))
            self.running[task] = claim.row_id
            task.add_done_callback(self._ended)
        for batch_id in await run_detached(lifecycle.due_to_end):
            try:
                await run_detached(lifecycle.finalize, batch_id)
            except Exception:
                log.exception("could not end batch %s", batch_id)
        return bool(claims)

    async def execute(self, claim: lifecycle.Claim) -> None:
        principal = services.BatchPrincipal(claim.organization_id, claim.api_key_id)
        meter = None
        try:
            try:
                status, body, meter = await _generate(claim, principal)
                if status >= 500 and claim.attempts < MAX_FAILED_ATTEMPTS:
                    raise Retry(counts=True)
            except GatewayError as refused:
                if refused.status == 503:  # no replica could take it now: the batch waits for one
                    raise Retry(counts=False) from None
                if refused.status >= 500 and claim.attempts < MAX_FAILED_ATTEMPTS:
                    raise Retry(counts=True) from None
                status, body = refused.status, render(refused)[0]
            usage = await run_detached(_usage, claim, meter, status)
            await run_detached(lifecycle.record, claim, self.owner, status_code=status, body=body, usage=usage)
        except Retry as retry:
            await run_detached(lifecycle.put_back, claim, self.owner, delay_seconds=RETRY_SECONDS, counts=retry.counts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch request %s failed", claim.request_id)
            if claim.attempts < MAX_FAILED_ATTEMPTS:
                await run_detached(lifecycle.put_back, claim, self.owner, delay_seconds=RETRY_SECONDS)
            else:
                body = inference.server_error("The platform failed while running this request.", "internal_error")
                usage = await run_detached(_usage, claim, meter, 500)
                await run_detached(lifecycle.record, claim, self.owner, status_code=500, body=body, usage=usage)
