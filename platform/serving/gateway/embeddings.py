"""/v1/embeddings: authenticate, resolve the model to its replicas (scaling it from zero when it
has none), rate limit and reserve what the inputs can cost, forward the parsed request, and meter
the replica's own token count.

The inputs' cost is bounded before anything runs: a text is at most one token per UTF-8 byte plus
the model's few special tokens, and no input longer than the model reads is embedded (the replica
refuses it). A client that leaves mid-request does not stop the replica, which finishes the pass it
is in; the answer is still read, so the ledger holds the replica's exact count."""

from __future__ import annotations

import asyncio
import logging

import orjson

from billing.models import UsageEvent
from serving import routing
from serving.gateway import inference, ratelimit, upstream
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.gateway.metering import Meter
from serving.protocol import ProtocolError
from serving.protocol import embeddings as protocol
from tenancy.roles import Scope

Outcome = UsageEvent.Outcome
ROUTE = "embeddings"
SPECIAL_TOKENS = 4  # what a tokenizer adds around one input, at most ([CLS] … [SEP] is 2)
log = logging.getLogger("serving.gateway")


def token_bound(parsed: protocol.EmbeddingsRequest, context_length: int) -> int:
    total = 0
    for item in parsed.items():
        size = len(item.encode()) if isinstance(item, str) else len(item)
        total += min(size + SPECIAL_TOKENS, context_length or size + SPECIAL_TOKENS)
    return total


def parse(body: dict) -> protocol.EmbeddingsRequest:
    """The request as the protocol reads it, or the 400 that names what is wrong."""
    try:
        return protocol.parse(body)
    except ProtocolError as problem:
        raise GatewayError(400, problem.message, param=problem.param, code=problem.code) from None


@gateway_view("POST")
async def embeddings(request):
    principal = await authenticate(request, Scope.INFERENCE)
    body = inference.request_body(request)
    route = await inference.route_for(principal, body["model"], "embedding")
    parsed = parse(body)
    route = await inference.serving_route(principal, parsed.model, route)
    bound = token_bound(parsed, route.context_length)
    grant = await ratelimit.acquire(principal, bound, route.endpoint)
    admitted = await inference.admit(request.request_id, principal, route, parsed.model, bound, 0, grant)
    meter = Meter(request.request_id, principal, ROUTE, parsed.model, route.base_model, False, grant, admitted)
    meter.prompt_estimate = bound
    # The exchange runs in a task of its own: a client that leaves cannot cut the books short.
    exchange = asyncio.ensure_future(_exchange(route, parsed, meter))
    try:
        status, payload = await asyncio.shield(exchange)
    except asyncio.CancelledError:
        exchange.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise
    response = inference.json_response(payload, status)
    for name, value in grant.headers().items():
        response[name] = value
    return response


async def _exchange(route: routing.Route, parsed: protocol.EmbeddingsRequest, meter: Meter) -> tuple[int, dict]:
    """Send to the first replica that takes it; close the books with what it answered."""
    try:
        return await send(route, parsed, meter)
    except GatewayError:
        raise
    except Exception:
        log.exception("embeddings request %s failed", meter.request_id)
        meter.close(500, Outcome.UPSTREAM_ERROR)
        return 500, inference.server_error("The gateway failed while handling this request.", "internal_error")


async def send(route: routing.Route, parsed: protocol.EmbeddingsRequest, meter: Meter) -> tuple[int, dict]:
    """The replica's answer and status; the meter closed with what it used."""
    response = await inference.open_upstream(
        route, "/v1/embeddings", meter, lambda replica: parsed.forward(replica.upstream_model)
    )
    if response.status != 200:
        payload = await inference.error_of(response)
        meter.close(response.status, Outcome.REJECTED)
        return response.status, payload
    try:
        payload = orjson.loads(await response.read())
        meter.saw({"prompt_tokens": int(payload["usage"]["prompt_tokens"]), "completion_tokens": 0})
    except (*upstream.STREAM_ERRORS, ValueError, KeyError, TypeError):
        meter.close(502, Outcome.UPSTREAM_ERROR)
        return 502, inference.server_error("The model server sent an answer the gateway could not read.")
    finally:
        response.release()
    meter.first_token()
    meter.close(200, Outcome.OK)
    payload["model"] = parsed.model
    payload["usage"] = {"prompt_tokens": meter.prompt_tokens, "total_tokens": meter.prompt_tokens}
    return 200, payload
