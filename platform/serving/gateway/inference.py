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
import json

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse

from billing import services as billing
from billing.models import UsageEvent
from serving import routing
from serving.gateway import ratelimit, upstream
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.gateway.metering import Meter
from tenancy.roles import Scope

Outcome = UsageEvent.Outcome


def _body(request) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise GatewayError(413, "The request body is too large.", code="request_too_large") from None
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
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
    if endpoint == "chat.completions":
        text = json.dumps(body.get("messages", ""), ensure_ascii=False)
        budget = body.get("max_completion_tokens") or body.get("max_tokens")
    else:
        text = json.dumps(body.get("prompt", ""), ensure_ascii=False)
        budget = body.get("max_tokens")
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
        client = upstream.client()
        try:
            response = await client.send(
                client.build_request("POST", replica.url + path, json=payload, headers=headers), stream=True
            )
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


async def _upstream_error(response, meter: Meter) -> JsonResponse:
    raw = await response.aread()
    await response.aclose()
    try:
        payload = json.loads(raw)
        assert isinstance(payload.get("error"), dict)
    except (ValueError, AssertionError, AttributeError):
        payload = {
            "error": {
                "message": raw.decode(errors="replace")[:500] or "The model server failed.",
                "type": "server_error",
                "param": None,
                "code": "upstream_error",
            }
        }
    status = response.status_code if response.status_code < 500 else 502
    meter.close(status, Outcome.REJECTED if status < 500 else Outcome.UPSTREAM_ERROR)
    return JsonResponse(payload, status=status)


def _has_text(chunk: dict) -> bool:
    for choice in chunk.get("choices") or []:
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


async def _relay(response, meter: Meter, model: str, include_usage: bool):
    outcome, status = Outcome.CLIENT_DISCONNECTED, 200
    try:
        async for event in upstream.events(response):
            if event == "[DONE]":
                outcome = Outcome.OK
                yield b"data: [DONE]\n\n"
                break
            if "error" in event:
                outcome, status = Outcome.UPSTREAM_ERROR, 502
                yield f"data: {json.dumps(event)}\n\n".encode()
                continue
            meter.saw(event.get("usage"))
            if _has_text(event):
                meter.first_token()
            if not event.get("choices") and event.get("usage"):
                if include_usage:
                    yield f"data: {json.dumps({**event, 'model': model})}\n\n".encode()
                continue
            event["model"] = model
            if include_usage:
                event["usage"] = None
            else:
                event.pop("usage", None)
            yield f"data: {json.dumps(event)}\n\n".encode()
        else:
            outcome, status = Outcome.UPSTREAM_ERROR, 502
    except upstream.STREAM_ERRORS:
        outcome, status = Outcome.UPSTREAM_ERROR, 502
        body = {
            "error": {
                "message": "The model server went away mid-stream.",
                "type": "server_error",
                "param": None,
                "code": "upstream_error",
            }
        }
        yield f"data: {json.dumps(body)}\n\n".encode()
    finally:
        # Closing the upstream connection is what stops decoding when our client has gone.
        meter.close(status, outcome)
        await asyncio.shield(response.aclose())


async def _assemble(response, meter: Meter, model: str, endpoint: str) -> JsonResponse:
    parts, first, finish, error = [], None, None, None
    try:
        async for event in upstream.events(response):
            if event == "[DONE]":
                break
            if "error" in event:
                error = event
                break
            first = first or event
            meter.saw(event.get("usage"))
            for choice in event.get("choices") or []:
                piece = (
                    (choice.get("delta") or {}).get("content") if endpoint == "chat.completions" else choice.get("text")
                )
                if piece:
                    meter.first_token()
                    parts.append(piece)
                finish = choice.get("finish_reason") or finish
    except asyncio.CancelledError:
        meter.close(499, Outcome.CLIENT_DISCONNECTED)
        raise
    finally:
        await asyncio.shield(response.aclose())
    if error is not None or first is None:
        meter.close(502, Outcome.UPSTREAM_ERROR)
        return JsonResponse(
            error
            or {
                "error": {
                    "message": "The model server sent no answer.",
                    "type": "server_error",
                    "param": None,
                    "code": "upstream_error",
                }
            },
            status=502,
        )
    meter.close(200, Outcome.OK)
    usage = {
        "prompt_tokens": meter.prompt_tokens,
        "completion_tokens": meter.completion_tokens,
        "total_tokens": meter.prompt_tokens + meter.completion_tokens,
    }
    text = "".join(parts)
    if endpoint == "chat.completions":
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
    return JsonResponse(body)


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
    if response.status_code != 200:
        result = await _upstream_error(response, meter)
    elif streamed:
        result = StreamingHttpResponse(
            _relay(response, meter, model, _client_wants_usage(body)), content_type="text/event-stream"
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
    return await _proxy(request, "chat.completions", "/v1/chat/completions")


@gateway_view("POST")
async def completions(request):
    return await _proxy(request, "completions", "/v1/completions")
