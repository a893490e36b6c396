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
import contextlib
import dataclasses
import logging
import time

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.crypto import salted_hmac

from billing import admission
from billing.budgets import InsufficientQuota
from billing.models import UsageEvent
from serving import autoscale, routing
from serving.gateway import ratelimit, upstream, validation
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.gateway.metering import Meter
from serving.runtime import answers
from tenancy.detached import run_detached
from tenancy.roles import Scope

Outcome = UsageEvent.Outcome
CHAT = validation.CHAT
log = logging.getLogger("serving.gateway")
MODEL_UNAVAILABLE_RETRY_SECONDS = 5
COLD_START_RETRY_SECONDS = 30  # no replica can start now (no room, no agent): worth a later try


class RelayResponse(StreamingHttpResponse):
    """A streamed answer whose relay is closed when Django stops sending it (its client left while
    a chunk waited to be sent), so its books close then, not whenever the generator is collected."""

    def __init__(self, relay, **kwargs):
        super().__init__(relay, **kwargs)
        self.relay = relay  # the generator itself, for a caller that re-shapes the stream (Responses API)

    async def __aiter__(self):
        async with contextlib.aclosing(self.relay):
            async for part in self.streaming_content:
                yield part


def json_response(body: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def server_error(message: str, code: str = "upstream_error") -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def request_json(request) -> dict:
    """The request's JSON object body, or the 400 (413) that says what is wrong with it."""
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
    return body


def request_body(request) -> dict:
    """An inference request's body: a JSON object naming a model."""
    body = request_json(request)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise GatewayError(400, "You must provide a model parameter.", param="model", code="missing_model")
    if "\x00" in body["model"] or len(body["model"]) > 256:
        raise GatewayError(400, "The model name is not valid.", param="model", code="invalid_model")
    return body


BATCH_PRIORITY = 1  # vLLM's and our runtime's priority scheduling serve lower values first; the default is 0

# What a runtime adds to the prompt to describe tools, beyond their definitions (the fallback's
# instructions are about 120 tokens): held, never under-counted.
TOOL_INSTRUCTIONS_TOKENS = 256


def _prompt_estimate(checked: validation.Checked) -> int:
    """Prompt tokens, over-estimated from the UTF-8 size (about four bytes a token in English) plus
    the chat template's few tokens per message; corrected to the real count afterwards."""
    messages = checked.forward.get("messages") or [None]
    return len(checked.prompt_text.encode()) // 3 + 8 * len(messages) + 1


def _prompt_bound(checked: validation.Checked) -> int:
    """Prompt tokens, never under-counted, for the money a request may cost: a byte-level tokenizer
    never makes more tokens than UTF-8 bytes; the template adds a few per message and a default
    system prompt. The reservation holds this; the charge is the real count."""
    messages = checked.forward.get("messages") or [None]
    tools = TOOL_INSTRUCTIONS_TOKENS if checked.forward.get("tools") else 0
    return len(checked.prompt_text.encode()) + 8 * len(messages) + 64 + tools


async def admit(request_id: str, principal, route: routing.Route, served: str, prompt_tokens: int, cap: int, grant):
    """Billing's admission (billing.admission): priced, and its worst case held, before anything is
    forwarded. A refusal gives the rate-limit reservation back."""
    try:
        return await admission.admit(
            request_id=request_id,
            organization_id=principal.organization_id,
            api_key_id=principal.key_id,
            model=served,
            base_model=route.base_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=cap,
            # A dedicated endpoint runs processes of its own, paid for by the replica-minute: its
            # calls are metered (tokens in the ledger) but not priced per token.
            free=route.endpoint is not None and route.endpoint.dedicated,
        )
    except (InsufficientQuota, admission.MeteringUnavailable) as refused:
        await ratelimit.correct(grant, 0)
        refused.quiet = True  # expected: not logged as an error
        raise
    except DatabaseError:
        await ratelimit.correct(grant, 0)
        # A budget applies and cannot be checked: fail closed, and say it is worth retrying.
        raise GatewayError(
            503,
            "Billing is unavailable right now, so this request cannot be admitted. Retry shortly.",
            code="billing_unavailable",
            error_type="server_error",
            headers={"retry-after": "5"},
            quiet=True,
        ) from None
    except BaseException:
        await ratelimit.correct(grant, 0)
        raise


def _completion_cap(checked: validation.Checked, route: routing.Route, prompt_estimate: int) -> int:
    """What the upstream may generate: the caller's max_tokens, else the model's default cap (kept
    inside the context where the prompt estimate allows). Always sent, so the model server cannot
    generate more than the gateway reserved."""
    if checked.max_tokens is not None:
        return checked.max_tokens
    cap = route.default_max_tokens
    if route.endpoint is not None and route.endpoint.max_tokens_cap is not None:
        cap = min(cap, route.endpoint.max_tokens_cap)
    if route.context_length:
        cap = min(cap, max(1, route.context_length - prompt_estimate))
    return cap


def prefix_cache_salt(organization_id: int) -> str:
    """What keeps an organization's prompts apart in a model server's prefix cache: a prefix
    another organization sent is never a hit (a faster answer would tell it that it was sent).
    Derived from the secret key, so it cannot be guessed and is the same on every web process."""
    return salted_hmac("maas.prefix-cache", str(organization_id)).hexdigest()[:32]


def _generation_body(route: routing.Route, payload: dict, priority: str = "", salt: str = ""):
    def body_of(replica: routing.Replica) -> dict:
        body = dict(payload, model=route.upstream_model or replica.upstream_model)
        body["stream_options"] = {"include_usage": True}
        if replica.engine in ("builtin", "vllm"):
            body["stream_options"]["continuous_usage_stats"] = True
        # Both engines take vLLM's scheduling fields; another OpenAI-compatible upstream would not.
        if replica.engine in ("builtin", "vllm") and salt:
            body["cache_salt"] = salt
        if priority == "batch" and (replica.engine == "builtin" or (replica.engine == "vllm" and replica.pooled)):
            # The pool starts vLLM with priority scheduling; one registered by hand may lack it
            # and would refuse the field.
            body["priority"] = BATCH_PRIORITY
        return body

    return body_of


async def open_upstream(route: routing.Route, path: str, meter: Meter, body_of):
    """The first replica's answer that is not a server failure; anything that fails before a byte
    reached the client (connection refused or reset, timeout, a 5xx) moves on to the next one.
    `body_of(replica)` is what that replica is sent."""
    failure = None
    for replica in routing.attempt_order(route):
        body = body_of(replica)
        headers = {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}
        # Our runtime knows the request by the gateway's id, to say what it generated if the client leaves.
        meter.replica = replica
        try:
            response = await upstream.post(replica.url + path, body, {**headers, "X-Request-Id": meter.request_id})
            if response.status == 404 and route.adapter_path:
                # The replica has not loaded this fine-tuned model's adapter yet: load it, once.
                response.release()
                await upstream.load_adapter(replica.url, headers, name=body["model"], path=route.adapter_path)
                response = await upstream.post(replica.url + path, body, {**headers, "X-Request-Id": meter.request_id})
        except upstream.CONNECT_ERRORS as error:
            log.warning("replica %s failed before answering: %r", replica.name, error)
            routing.mark_down(replica)
            meter.replica = None
            continue
        if response.status >= 500:
            failure = await error_of(response)
            log.warning("replica %s answered %s: %s", replica.name, response.status, failure["error"]["message"])
            meter.replica = None
            continue
        meter.backend = replica.name
        return response
    if failure is not None:
        meter.close(502, Outcome.UPSTREAM_ERROR)
        raise GatewayError(502, failure["error"]["message"], code="upstream_error", error_type="server_error")
    # No replica took the request (the model may still be loading): nothing was used, so nothing
    # is billed or counted, and the caller is told when to retry.
    meter.discard()
    log.warning("no replica of %s is reachable; answered 503", route.requested_model)
    raise GatewayError(
        503,
        f"The model '{route.requested_model}' is not reachable right now (it may still be loading); "
        f"retry in {MODEL_UNAVAILABLE_RETRY_SECONDS} s.",
        code="model_unavailable",
        error_type="server_error",
        headers={"retry-after": str(MODEL_UNAVAILABLE_RETRY_SECONDS)},
        quiet=True,
    )


async def error_of(response) -> dict:
    """An upstream error answer as an OpenAI error body, whatever the upstream sent."""
    try:
        raw = await response.read()
    except upstream.STREAM_ERRORS:
        raw = b""
    finally:
        response.release()
    try:
        payload = orjson.loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
            raise ValueError
        error = payload["error"]
        return {
            "error": {
                "message": str(error.get("message") or "The model server failed."),
                "type": str(error.get("type") or "server_error"),
                "param": error.get("param") if isinstance(error.get("param"), str) else None,
                "code": error.get("code") if isinstance(error.get("code"), str) else None,
            }
        }
    except ValueError:
        return server_error(raw.decode(errors="replace")[:500] or "The model server failed.")


def _finish(response, *, cleanly: bool) -> None:
    # A fully read answer returns its connection to the pool; anything else drops the connection,
    # which is what tells the model server to stop decoding.
    if cleanly:
        response.release()
    else:
        upstream.abort(response)


async def _upstream_error(response, meter: Meter) -> HttpResponse:
    status = response.status if response.status < 500 else 502
    payload = await error_of(response)
    meter.close(status, Outcome.REJECTED if status < 500 else Outcome.UPSTREAM_ERROR)
    return json_response(payload, status)


async def _relay(response, meter: Meter, checked: validation.Checked, endpoint: str):
    model, include_usage = checked.model, checked.include_usage
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
            pieces = sum(answers.pieces(choice, endpoint == CHAT) for choice in choices if isinstance(choice, dict))
            if checked.legacy_functions:
                event = answers.as_legacy_functions(event)
            if pieces:
                meter.first_token()
                meter.relayed += pieces
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
    except Exception:  # a malformed upstream event: the client still gets an error event, the books close
        log.exception("relaying %s failed", meter.request_id)
        outcome, status = Outcome.UPSTREAM_ERROR, 502
        yield _sse(server_error("The model server sent an answer the gateway could not relay."))
    finally:
        if outcome == Outcome.CLIENT_DISCONNECTED:
            meter.abandon(response)  # closed at any point of the stream: cancelled, or closed at a yield
        else:
            meter.close(status, outcome)
            _finish(response, cleanly=outcome == Outcome.OK)


async def assemble(response, meter: Meter, checked: validation.Checked, endpoint: str) -> HttpResponse:
    first, error, complete, gone = None, None, False, False
    assembly = answers.Assembly(chat=endpoint == CHAT)
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
            if checked.legacy_functions:
                event = answers.as_legacy_functions(event)
            for choice in event.get("choices") or []:
                pieces = assembly.add(choice) if isinstance(choice, dict) else 0
                if pieces:
                    meter.first_token()
                    meter.relayed += pieces
    except asyncio.CancelledError:  # our client went away: charge what was generated, stop the server
        gone = True
        meter.abandon(response)
        raise
    except upstream.STREAM_ERRORS:
        error = server_error("The model server went away mid-answer.")
    except Exception:  # a malformed upstream event
        log.exception("assembling %s failed", meter.request_id)
        error = server_error("The model server sent an answer the gateway could not read.")
    finally:
        if not gone:
            _finish(response, cleanly=complete)
    if error is not None or first is None or not complete:
        # The engine refusing to go on with what the caller asked (a schema past its limits) is the
        # caller's 400; anything else is the model server's failure.
        status = 400 if (error or {}).get("error", {}).get("type") == "invalid_request_error" else 502
        meter.close(status, Outcome.UPSTREAM_ERROR)
        return json_response(error or server_error("The model server sent no complete answer."), status)
    meter.close(200, Outcome.OK)
    usage = answers.usage(meter.prompt_tokens, meter.completion_tokens, meter.cached_tokens)
    chat = endpoint == CHAT
    body = answers.completion(
        chat=chat,
        id=first.get("id") or f"{'chatcmpl' if chat else 'cmpl'}-{meter.request_id}",
        created=first.get("created") or int(meter.wall_started),
        model=checked.model,
        choices=assembly.choices(),
        usage=usage,
    )
    return json_response(body)


def _endpoint_access(route: routing.Route, principal) -> None:
    """A published endpoint's access list, before anything else of the request is looked at."""
    if route.endpoint.allowed_key_ids and str(principal.key_id or "") not in route.endpoint.allowed_key_ids:
        raise GatewayError(
            403,
            f"This API key may not call the endpoint '{route.endpoint.id}'.",
            code="endpoint_access_denied",
            error_type="permission_error",
        )


def _endpoint_cap(checked: validation.Checked, route: routing.Route, asked: str | None) -> validation.Checked:
    """An endpoint's max_tokens cap, on the validated request (whichever of max_tokens and
    max_completion_tokens set it): a caller asking for more is refused, a default above it capped."""
    cap = route.endpoint.max_tokens_cap
    if cap is None or checked.max_tokens is None or checked.max_tokens <= cap:
        return checked
    if asked is not None:
        raise GatewayError(
            400,
            f"{asked} is at most {cap} on the endpoint '{route.endpoint.id}' (got {checked.max_tokens}).",
            param=asked,
            code="invalid_value",
        )
    return dataclasses.replace(checked, max_tokens=cap)


async def route_for(principal, model: str, kind: str) -> routing.Route:
    """The model's route, or the error a caller of an API for another kind of model gets."""
    try:
        route = await routing.resolve(principal.organization_id, model)
    except routing.ModelNotFound:
        raise GatewayError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        ) from None
    if route.kind != kind:
        use = "/v1/embeddings" if route.kind == "embedding" else "/v1/chat/completions or /v1/completions"
        # No such model for this API: a 404, as OpenAI answers a chat call to a model that does not chat.
        raise GatewayError(
            404,
            f"The model '{model}' is {'an embedding' if route.kind == 'embedding' else 'a text-generation'} model: "
            f"call {use}.",
            param="model",
            code="model_not_supported",
        )
    return route


async def serving_route(principal, model: str, route: routing.Route) -> routing.Route:
    """The route with a replica in it: a model scaled to zero (or whose replicas all failed) is
    scaled up and waited for; else 503 with retry-after and the reason."""
    cannot_start = ""
    if not route.replicas and (
        route.endpoint is None or (route.endpoint.status == "ready" and not route.endpoint.dedicated)
    ):
        route, cannot_start = await _cold_start(principal.organization_id, model, route)
    if route.replicas:
        return route
    why, retry = "", MODEL_UNAVAILABLE_RETRY_SECONDS
    if cannot_start:
        why, retry = f" None can start: {cannot_start}.", COLD_START_RETRY_SECONDS
    elif route.endpoint is not None and route.endpoint.status != "ready":
        why = f" The endpoint is {route.endpoint.status}" + (
            f": {route.endpoint.status_reason}." if route.endpoint.status_reason else "."
        )
    raise GatewayError(
        503,
        f"No server is serving the model '{model}' right now.{why}",
        code="model_unavailable",
        error_type="server_error",
        headers={"retry-after": str(retry)},
    )


async def _proxy(request, endpoint: str, path: str):
    principal = await authenticate(request, Scope.INFERENCE)
    return await serve_generation(request, principal, request_body(request), endpoint, path)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A generation request as the gateway will send it: validated against its model's route (and
    an endpoint's rules), with the completion cap sent upstream and what it can cost at most."""

    route: routing.Route
    checked: validation.Checked
    prompt_estimate: int
    cap: int  # per choice
    served: str  # what is priced and metered: an endpoint's model, else the model called
    salt: str = ""  # the organization's prefix-cache salt (prefix_cache_salt)

    @property
    def prompt_bound(self) -> int:
        return _prompt_bound(self.checked)

    @property
    def completion_bound(self) -> int:
        return self.cap * self.checked.choices  # each of n choices may generate the cap

    def payload(self) -> dict:
        return {**self.checked.forward, "stream": True, "max_tokens": self.cap}

    def body_of(self, priority: str = ""):
        return _generation_body(self.route, self.payload(), priority, self.salt)


def plan(principal, route: routing.Route, body: dict, endpoint: str) -> Plan:
    """Everything the gateway decides about a generation before any replica is involved; raises the
    GatewayError a caller gets for a request the model or its endpoint refuses."""
    if route.endpoint is not None:
        _endpoint_access(route, principal)
    parsed = validation.parse(body, endpoint)
    for feature, param in parsed.features().items():
        if feature not in route.features:
            raise GatewayError(
                400,
                f"The model '{body['model']}' does not support '{param}'.",
                param=param,
                code="unsupported_parameter",
            )
    asked = parsed.completion_cap()[1]  # the caller's own, before the endpoint's defaults
    if route.endpoint is not None:
        parsed = validation.with_endpoint(parsed, dict(route.endpoint.defaults), route.endpoint.system_prompt)
    checked = validation.checked(parsed)
    if route.endpoint is not None:
        checked = _endpoint_cap(checked, route, asked)
    prompt_estimate = _prompt_estimate(checked)
    cap = _completion_cap(checked, route, prompt_estimate)
    served = route.endpoint.model if route.endpoint is not None else checked.model
    return Plan(route, checked, prompt_estimate, cap, served, prefix_cache_salt(principal.organization_id))


async def serve_generation(request, principal, body: dict, endpoint: str, path: str, metered_as: str = ""):
    """A chat or text completion, from the parsed body to the answer (assembled, or a RelayResponse
    streaming the engine's chunks); `metered_as` names the API route in the ledger when it is not
    `endpoint` (the Responses API is served as chat)."""
    route = await route_for(principal, body["model"], "chat")
    planned = plan(principal, route, body, endpoint)
    checked = planned.checked
    route = await serving_route(principal, checked.model, route)
    planned = dataclasses.replace(planned, route=route)
    prompt_estimate, served, completion = planned.prompt_estimate, planned.served, planned.completion_bound
    grant = await ratelimit.acquire(principal, prompt_estimate + completion, route.endpoint)
    admitted = await admit(request.request_id, principal, route, served, planned.prompt_bound, completion, grant)
    meter = Meter(
        request.request_id, principal, metered_as or endpoint, served, route.base_model, checked.stream, grant, admitted
    )
    meter.prompt_estimate = prompt_estimate
    meter.completion_cap = completion
    meter.endpoint_id = route.endpoint.id if route.endpoint is not None else ""
    try:
        try:
            response = await open_upstream(route, path, meter, planned.body_of())
        except asyncio.CancelledError:  # the client left before the model server's headers came
            meter.abandon()
            raise
        if response.status != 200:
            result = await _upstream_error(response, meter)
        elif checked.stream:
            result = RelayResponse(
                _relay(response, meter, checked, endpoint),
                content_type="text/event-stream",
            )
            result["Cache-Control"] = "no-cache"
            result["X-Accel-Buffering"] = "no"
        else:
            result = await assemble(response, meter, checked, endpoint)
    except GatewayError:
        raise
    except Exception:  # whatever failed, the books close and the caller gets an OpenAI error
        log.exception("gateway request %s failed", request.request_id)
        meter.close(500, Outcome.UPSTREAM_ERROR)
        raise GatewayError(500, "The gateway failed while handling this request.", code="internal_error") from None
    for name, value in grant.headers().items():
        result[name] = value
    return result


async def _cold_start(organization_id: int, model: str, route: routing.Route) -> tuple[routing.Route, str]:
    """A model none of whose replicas serves (scaled to zero, or its replica crashed): ask the pool
    for one and wait for it, up to SERVING_COLD_START_WAIT_SECONDS. Returns the route, and why no
    replica can start if none can. Nothing is admitted or billed while waiting; a caller that
    leaves stops waiting."""
    why = await run_detached(autoscale.cold_start, route.base_model)
    deadline = time.monotonic() + settings.SERVING_COLD_START_WAIT_SECONDS
    waited = 0
    while not why and not route.replicas and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        waited += 1
        route = await routing.refresh(organization_id, model)
        if not route.replicas and waited % 4 == 0:  # its replica may have failed meanwhile
            why = await run_detached(autoscale.cold_start, route.base_model)
    return route, why


@gateway_view("POST")
async def chat_completions(request):
    return await _proxy(request, CHAT, "/v1/chat/completions")


@gateway_view("POST")
async def completions(request):
    return await _proxy(request, "completions", "/v1/completions")
