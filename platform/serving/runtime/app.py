"""The runtime's HTTP API: OpenAI-compatible generation, vLLM-compatible adapter administration,
health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.runtime import answers, metrics
from serving.runtime.adapters import BASE, AdapterError
from serving.runtime.choices import Choice
from serving.runtime.engine import BATCH, INTERACTIVE, Engine, GenerationRequest
from serving.runtime.grammars import Grammars
from serving.runtime.protocol import Parsed, RequestError, parse_chat, parse_completion

# How long a request's real usage is remembered after it ended, for a caller that left before
# reading it (the gateway asks through /v1/abort_request).
REMEMBER_SECONDS = 300
ABORT_WAIT_SECONDS = 10


@dataclass
class RuntimeState:
    engine: Engine
    served_model: str
    api_key: str | None
    max_model_len: int
    grammars: Grammars
    started: int = 0
    # The requests of the last REMEMBER_SECONDS by their caller's id (x-request-id), oldest first.
    requests: OrderedDict = field(default_factory=OrderedDict)

    def remember(self, request_id: str, jobs: list[GenerationRequest]) -> None:
        """A request's jobs (one per choice) under its caller's id."""
        horizon = time.monotonic() - REMEMBER_SECONDS
        while self.requests:
            oldest_at, oldest = next(iter(self.requests.values()))
            if oldest_at > horizon or not all(job.ended.is_set() for job in oldest):
                break
            self.requests.popitem(last=False)
        self.requests[request_id] = (time.monotonic(), jobs)
        self.requests.move_to_end(request_id)


class AsyncSink:
    """Carries engine events (engine thread) to the request's coroutine (event loop), counting
    those its reader has not taken: the engine holds a row back while too many are unread."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.put_count = 0  # written by the engine thread only
        self.taken_count = 0  # written by the event loop only

    def put(self, event: tuple) -> None:
        self.put_count += 1
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self) -> tuple:
        event = await self.queue.get()
        self.taken_count += 1
        return event

    def unread(self) -> int:
        return self.put_count - self.taken_count


async def events_of(jobs: list[GenerationRequest]):
    """(choice index, event) of several jobs as they come, until each has ended (done or error)."""
    waiting = {asyncio.ensure_future(job.sink.get()): i for i, job in enumerate(jobs)}
    try:
        while waiting:
            ready, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(ready, key=waiting.get):
                index = waiting.pop(future)
                event = future.result()
                if event[0] == "token":
                    waiting[asyncio.ensure_future(jobs[index].sink.get())] = index
                yield index, event
    finally:
        for future in waiting:
            future.cancel()


def failure_of(event: tuple, parsed: Parsed) -> RequestError:
    """An engine's error event as the error answered: the schema's fault (400, naming its
    parameter) or the runtime's."""
    _, message, status = event
    if status == 400:
        return RequestError(message, parsed.constraint_param, 400, "schema_limit")
    return RequestError(message, status=status, code="runtime_error")


def scheduling(body: dict) -> tuple[int, str]:
    """vLLM's two scheduling fields, taken off the body before it is parsed as OpenAI's request:
    `priority` (0, the default, interactive; higher: later, as the batch runner's requests) and
    `cache_salt` (the gateway's per-organization salt; none: the prompt is not cached)."""
    priority, salt = body.pop("priority", 0), body.pop("cache_salt", None)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise RequestError("'priority' must be a non-negative integer.", "priority")
    if salt is not None and (not isinstance(salt, str) or not 0 < len(salt) <= 128):
        raise RequestError("'cache_salt' must be a string of 1 to 128 characters.", "cache_salt")
    return (BATCH if priority > 0 else INTERACTIVE), salt or ""


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(RequestError(message, param, status, code).body(), status_code=status)


async def json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object.")
    return body


def is_authorized(request: Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    supplied = request.headers.get("authorization", "")
    return hmac.compare_digest(supplied.encode(), f"Bearer {api_key}".encode())


def unauthorized() -> JSONResponse:
    return error(401, "Missing or wrong runtime API key.", code="invalid_api_key")


async def prometheus(request: Request) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_app(state: RuntimeState) -> Starlette:
    def authorized(request: Request) -> bool:
        return is_authorized(request, state.api_key)

    def resolve_model(name: str) -> str:
        if name == state.served_model:
            return BASE
        if name in state.engine.adapters.loaded:
            return name
        raise RequestError(f"The model `{name}` does not exist.", "model", 404, "model_not_found")

    async def generate(request: Request, endpoint: str) -> Response:
        if not authorized(request):
            return unauthorized()
        parse = parse_chat if endpoint == "chat" else parse_completion
        try:
            body = await json_object(request)
            priority, salt = scheduling(body)
            parsed = parse(body, state.engine.tokenizer, state.max_model_len)
            adapter = resolve_model(parsed.model)
            guides = [None] * parsed.n
            if parsed.constraint is not None:
                guides = [await state.grammars.guide(parsed.constraint, parsed.constraint_param)]
                guides += [guides[0].copy() for _ in range(parsed.n - 1)]
        except RequestError as problem:
            return JSONResponse(problem.body(), status_code=problem.status)
        jobs = []
        # Prompts share cached prefixes only within one salt, and for one adapter's weights.
        path = state.engine.adapters.loaded.get(adapter, "") if adapter != BASE else ""
        namespace = f"{salt}\x00{adapter}\x00{path}" if salt else None
        for i, guide in enumerate(guides):
            params = parsed.params
            if params.seed is not None and i:  # the choices of one seeded request differ, reproducibly
                params = dataclasses.replace(params, seed=params.seed + i)
            jobs.append(
                GenerationRequest(
                    parsed.prompt_ids,
                    params,
                    AsyncSink(),
                    adapter=adapter,
                    endpoint=endpoint,
                    guide=guide,
                    priority=priority,
                    cache_namespace=namespace,
                )
            )
        state.remember(request.headers.get("x-request-id") or jobs[0].id, jobs)
        for job in jobs:  # one after the other: taken into the same prefill, the prompt is computed once
            state.engine.submit(job)
        constraint = parsed.constraint
        required = None if constraint is None or constraint.kind != "tools" else constraint.required
        choices = [
            Choice(
                i,
                chat=endpoint == "chat",
                tools_required=required,
                token_bytes=state.grammars.token_bytes,
                named=bool(constraint and constraint.named),
            )
            for i in range(len(jobs))
        ]
        if parsed.stream:
            return StreamingResponse(
                stream(jobs, choices, parsed, endpoint),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await collect(jobs, choices, parsed, endpoint)

    def usage_of(parsed: Parsed, choices: list[Choice], jobs: list[GenerationRequest]) -> dict:
        # The prompt is counted once, and so are its cached tokens (known once it was prefilled).
        cached = jobs[0].cached_tokens if jobs[0].cache_namespace is not None else None
        return answers.usage(len(parsed.prompt_ids), sum(choice.completion_tokens for choice in choices), cached)

    async def collect(jobs, choices: list[Choice], parsed: Parsed, endpoint: str) -> Response:
        try:
            async for index, event in events_of(jobs):
                choice = choices[index]
                if event[0] == "token":
                    choice.token(event[1], event[2], event[3])
                elif event[0] == "error":
                    problem = failure_of(event, parsed)
                    return JSONResponse(problem.body(), status_code=problem.status)
                else:
                    choice.done(event[1], event[2]["completion_tokens"])
        finally:
            for job in jobs:
                job.cancelled.set()  # a no-op once finished; stops decoding if the client went away
        chat = endpoint == "chat"
        return JSONResponse(
            answers.completion(
                chat=chat,
                id=f"{'chatcmpl' if chat else 'cmpl'}-{jobs[0].id}",
                created=int(time.time()),
                model=parsed.model,
                choices=[choice.whole() for choice in choices],
                usage=usage_of(parsed, choices, jobs),
            )
        )

    async def stream(jobs, choices: list[Choice], parsed: Parsed, endpoint: str):
        created = int(time.time())
        chat = endpoint == "chat"
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{jobs[0].id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": parsed.model,
        }

        def chunk(choice: Choice, delta: dict, finish=None) -> str:
            logprobs = choice.take_logprobs()
            if chat:
                payload = {"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                payload = {"index": choice.index, "text": delta.get("text", ""), "logprobs": logprobs}
                payload["finish_reason"] = finish
            event = {**base, "choices": [payload]}
            if parsed.continuous_usage:
                event["usage"] = usage_of(parsed, choices, jobs)
            elif parsed.include_usage:
                event["usage"] = None
            return f"data: {json.dumps(event)}\n\n"

        try:
            if chat:
                for choice in choices:
                    yield chunk(choice, {"role": "assistant", "content": ""})
            async for index, event in events_of(jobs):
                choice = choices[index]
                if event[0] == "token":
                    for delta in choice.token(event[1], event[2], event[3]):
                        yield chunk(choice, delta)
                elif event[0] == "error":
                    yield f"data: {json.dumps(failure_of(event, parsed).body())}\n\n"
                    break
                else:
                    for delta in choice.done(event[1], event[2]["completion_tokens"]):
                        yield chunk(choice, delta)
                    yield chunk(choice, {} if chat else {"text": ""}, finish=choice.finish_reason)
            else:
                if parsed.include_usage or parsed.continuous_usage:
                    yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage_of(parsed, choices, jobs)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancelled.set()  # the client disconnected, or we are done: stop decoding these rows

    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def models(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        data = [
            {
                "id": state.served_model,
                "object": "model",
                "created": state.started,
                "owned_by": "maas",
                "root": state.served_model,
                "parent": None,
                "max_model_len": state.max_model_len,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": state.started,
                "owned_by": "maas",
                "root": str(path),
                "parent": state.served_model,
            }
            for name, path in list(state.engine.adapters.loaded.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def authorized_body(request: Request) -> dict | Response:
        """The request's JSON object, or the answer refusing it (no key, not JSON)."""
        if not authorized(request):
            return unauthorized()
        try:
            return await json_object(request)
        except RequestError as problem:
            return JSONResponse(problem.body(), status_code=problem.status)

    async def adapter_admin(request: Request, action: str) -> Response:
        if state.api_key is None:
            return error(403, "Adapter administration needs the runtime to be started with an API key.")
        body = await authorized_body(request)
        if isinstance(body, Response):
            return body
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            return error(400, "'lora_name' is required.", "lora_name")
        if action == "load":
            path = body.get("lora_path")
            if not isinstance(path, str) or not path:
                return error(400, "'lora_path' is required.", "lora_path")
            command = lambda engine: engine.adapters.load(name, path, engine.in_use())  # noqa: E731
        else:
            command = lambda engine: engine.adapters.unload(name, engine.in_use())  # noqa: E731
        try:
            added = await asyncio.wrap_future(state.engine.call(command))
        except AdapterError as problem:
            return error(problem.status, problem.message, "lora_path" if problem.status == 403 else None)
        if action == "load":
            verb = "added" if added else "was already loaded"
            return PlainTextResponse(f"Success: LoRA adapter '{name}' {verb} successfully.")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def abort_request(request: Request) -> Response:
        """Stop a request by its caller's id and answer what it really generated: how a gateway whose
        client left learns the count to bill, whatever its own reading had reached."""
        body = await authorized_body(request)
        if isinstance(body, Response):
            return body
        request_id = body.get("request_id")
        found = state.requests.get(request_id) if isinstance(request_id, str) else None
        if found is None:
            return error(404, f"No request {request_id!r} is known here.", "request_id", "request_not_found")
        jobs = found[1]
        for job in jobs:
            job.cancelled.set()
        deadline = time.monotonic() + ABORT_WAIT_SECONDS
        for job in jobs:
            if not await asyncio.to_thread(job.ended.wait, max(0.0, deadline - time.monotonic())):
                return error(504, "The request did not stop in time.", code="abort_timeout")
        usage = answers.usage(jobs[0].usage["prompt_tokens"], sum(job.usage["completion_tokens"] for job in jobs))
        return JSONResponse({"request_id": request_id, "finish_reason": jobs[0].finish_reason, "usage": usage})

    async def load_adapter(request: Request) -> Response:
        return await adapter_admin(request, "load")

    async def unload_adapter(request: Request) -> Response:
        return await adapter_admin(request, "unload")

    async def health(request: Request) -> Response:
        alive = state.engine.alive()
        return JSONResponse(
            {
                "status": "ok" if alive else "engine stopped",
                "model": state.served_model,
                "adapters": list(state.engine.adapters.loaded),
            },
            status_code=200 if alive else 503,
        )

    state.started = int(time.time())
    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/abort_request", abort_request, methods=["POST"]),
            Route("/v1/load_lora_adapter", load_adapter, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload_adapter, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
