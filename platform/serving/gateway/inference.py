"""/v1/chat/completions and /v1/completions: authenticate, resolve the model to replicas, rate
limit, reserve, forward (retrying another replica if one refuses the connection before the first
byte), relay or assemble the answer, and meter what the model server actually generated.

The gateway always streams from the model server, with per-chunk usage (vLLM's
`continuous_usage_stats`): it then knows the generated token count at every moment, so a client
that disconnects — streaming or not — is charged for exactly what was generated, and decoding
stops. Plain (non-stream) answers are assembled here.
"""

from __future__ import annotations

import asyncio

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, StreamingHttpResponse

from billing import services as billing
from billing.models import UsageEvent
from serving import routing
from serving.gateway import ratelimit, upstream
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.gateway.metering import Meter
from tenancy.roles import Scope

Outcome = UsageEvent.Outcome
CHAT = "chat.completions"


def json_response(body: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def server_error(message: str, code: str = "upstream_error") -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _body(request) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise GatewayError(413, "The request body is too large.", code="request_too_large") from None
    try:
        body = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        raise GatewayError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise GatewayError(400, "You must provide a model parameter.", param="model", code="missing_model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise GatewayError(400, "'stream' must be a boolean.", param="stream")
    return body


def _estimate(body: dict, endpoint: str) -> int:
    """Tokens the request may use, for the rate limiter (corrected to the real count afterwards)."""
    text = orjson.dumps(body.get("messages" if endpoint == CHAT else "prompt", ""))
    budget = (
        (body.get("max_completion_tokens") or body.get("max_tokens")) if endpoint == CHAT else body.get("max_tokens")
    )
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        budget = settings.RATE_LIMIT_COMPLETION_ESTIMATE
    return len(text) // 3 + 1 + budget


def _client_wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return bool(body.get("stream") and isinstance(options, dict) and options.get("include_usage"))


async def _open(route: routing.Route, body: dict, path: str, meter: Meter):
    for replica in routing.attempt_order(route):
        payload = dict(body, model=route.upstream_model or replica.upstream_model, stream=True)
        payload["stream_options"] = {"include_usage": True}
        if replica.engine in ("builtin", "vllm"):
            payload["stream_options"]["continuous_usage_stats"] = True
        headers = {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}
        try:
            response = await upstream.post(replica.url + path, payload, headers)
            if response.status == 404 and route.adapter_path:
                # The replica has not loaded this fine-tuned model's adapter yet: load it, once.
                response.release()
                await upstream.load_adapter(replica.url, headers, name=payload["model"], path=route.adapter_path)
                response = await upstream.post(replica.url + path, payload, headers)
        except upstream.CONNECT_ERRORS:
            routing.mark_down(replica)
            continue
        meter.backend = replica.name
        return response
    meter.close(503, Outcome.UPSTREAM_ERROR)
    raise GatewayError(
        503,
        f"No server for the model '{route.requested_model}' is reachable right now; retry shortly.",
        code="model_unavailable",
        error_type="server_error",
    )


def _finish(response, *, cleanly: bool) -> None:
    # A fully read answer returns its connection to the pool; anything else drops the connection,
    # which is what tells the model server to stop decoding.
    if cleanly:
        response.release()
    else:
        upstream.abort(response)


async def _upstream_error(response, meter: Meter) -> HttpResponse:
    raw = await response.read()
    response.release()
    try:
        payload = orjson.loads(raw)
        if not isinstance(payload.get("error"), dict):
            raise ValueError
    except (ValueError, AttributeError):
        payload = server_error(raw.decode(errors="replace")[:500] or "The model server failed.")
    status = response.status if response.status < 500 else 502
    meter.close(status, Outcome.REJECTED if status < 500 else Outcome.UPSTREAM_ERROR)
    return json_response(payload, status)


def _text_of(choice: dict, endpoint: str) -> str | None:
    return (choice.get("delta") or {}).get("content") if endpoint == CHAT else choice.get("text")


async def _relay(response, meter: Meter, model: str, endpoint: str, include_usage: bool):
    outcome, status = Outcome.CLIENT_DISCONNECTED, 200
    try:
        async for event in upstream.events(response):
            if event == "[DONE]":
                outcome = Outcome.OK
                yield b"data: [DONE]\n\n"
                break
            if "error" in event:
                outcome, status = Outcome.UPSTREAM_ERROR, 502
                yield _sse(event)
                continue
            meter.saw(event.get("usage"))
            choices = event.get("choices")
            if not choices:
                if include_usage and event.get("usage"):
                    yield _sse({**event, "model": model})
                continue
            if any(_text_of(choice, endpoint) for choice in choices):
                meter.first_token()
            event["model"] = model
            if include_usage:
                event["usage"] = None
            else:
                event.pop("usage", None)
            yield _sse(event)
        else:
            outcome, status = Outcome.UPSTREAM_ERROR, 502
    except upstream.STREAM_ERRORS:
        outcome, status = Outcome.UPSTREAM_ERROR, 502
        yield _sse(server_error("The model server went away mid-stream."))
    finally:
        meter.close(status, outcome)
        _finish(response, cleanly=outcome == Outcome.OK)


async def _assemble(response, meter: Meter, model: str, endpoint: str) -> HttpResponse:
    parts, first, finish, error, complete = [], None, None, None, False
    try:
        async for event in upstream.events(response):
            if event == "[DONE]":
                complete = True
                break
            if "error" in event:
                error = event
                break
            first = first or event
            meter.saw(event.get("usage"))
            for choice in event.get("choices") or []:
                piece = _text_of(choice, endpoint)
                if piece:
                    meter.first_token()
                    parts.append(piece)
                finish = choice.get("finish_reason") or finish
    except asyncio.CancelledError:  # our client went away: charge what was generated, stop the server
        meter.close(499, Outcome.CLIENT_DISCONNECTED)
        raise
    except upstream.STREAM_ERRORS:
        error = server_error("The model server went away mid-answer.")
    finally:
        _finish(response, cleanly=complete)
    if error is not None or first is None or not complete:
        meter.close(502, Outcome.UPSTREAM_ERROR)
        return json_response(error or server_error("The model server sent no complete answer."), 502)
    meter.close(200, Outcome.OK)
    usage = {
        "prompt_tokens": meter.prompt_tokens,
        "completion_tokens": meter.completion_tokens,
        "total_tokens": meter.prompt_tokens + meter.completion_tokens,
    }
    text = "".join(parts)
    if endpoint == CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
        body = {
            "id": first["id"],
            "object": "chat.completion",
            "created": first["created"],
            "model": model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": None,
        }
    else:
        body = {
            "id": first["id"],
            "object": "text_completion",
            "created": first["created"],
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
    return json_response(body)


async def _proxy(request, endpoint: str, path: str):
    principal = await authenticate(request, Scope.INFERENCE)
    body = _body(request)
    model = body["model"]
    try:
        route = await routing.resolve(principal.organization_id, model)
    except routing.ModelNotFound:
        raise GatewayError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        ) from None
    if not route.replicas:
        raise GatewayError(
            503,
            f"No server is serving the model '{model}' right now.",
            code="model_unavailable",
            error_type="server_error",
        )
    estimate = _estimate(body, endpoint)
    grant = await ratelimit.acquire(principal, estimate)
    reservation = billing.reserve(
        organization_id=principal.organization_id, api_key_id=principal.key_id, model=model, estimated_tokens=estimate
    )
    streamed = bool(body.get("stream"))
    meter = Meter(request.request_id, principal, endpoint, model, route.base_model, streamed, grant, reservation)
    response = await _open(route, body, path, meter)
    if response.status != 200:
        result = await _upstream_error(response, meter)
    elif streamed:
        result = StreamingHttpResponse(
            _relay(response, meter, model, endpoint, _client_wants_usage(body)), content_type="text/event-stream"
        )
        result["Cache-Control"] = "no-cache"
        result["X-Accel-Buffering"] = "no"
    else:
        result = await _assemble(response, meter, model, endpoint)
    for name, value in grant.headers().items():
        result[name] = value
    return result


@gateway_view("POST")
async def chat_completions(request):
    return await _proxy(request, CHAT, "/v1/chat/completions")


@gateway_view("POST")
async def completions(request):
    return await _proxy(request, "completions", "/v1/completions")
