"""The runtime's HTTP API when it serves an embedding model: `/v1/embeddings`, `/v1/models`,
health and the same Prometheus metrics (running and waiting requests drive autoscaling)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.protocol import ProtocolError
from serving.protocol import embeddings as protocol
from serving.runtime import metrics
from serving.runtime.app import error, is_authorized, json_object, prometheus, unauthorized
from serving.runtime.embedder import Embedder
from serving.runtime.protocol import RequestError


@dataclass
class EmbeddingState:
    embedder: Embedder
    served_model: str
    api_key: str | None
    started: int = 0


def build_embedding_app(state: EmbeddingState) -> Starlette:
    embedder = state.embedder

    async def embeddings(request: Request) -> Response:
        if not is_authorized(request, state.api_key):
            return unauthorized()
        try:
            parsed = protocol.parse(await json_object(request))
        except RequestError as problem:
            return JSONResponse(problem.body(), status_code=problem.status)
        except ProtocolError as problem:
            return error(400, problem.message, problem.param, problem.code)
        if parsed.model != state.served_model:
            return error(404, f"The model `{parsed.model}` does not exist.", "model", "model_not_found")
        if parsed.dimensions is not None and parsed.dimensions != embedder.dimensions:
            return error(
                400,
                f"This model makes {embedder.dimensions}-dimensional embeddings and cannot shorten them "
                f"(dimensions={parsed.dimensions}).",
                "dimensions",
                "unsupported_value",
            )
        inputs = []
        for index, item in enumerate(parsed.items()):
            where, param = parsed.place(index)
            if not isinstance(item, str) and max(item) >= embedder.vocab_size:
                return error(400, f"Invalid '{where}': token ids are below {embedder.vocab_size}.", param)
            ids = embedder.token_ids(item)
            if len(ids) > embedder.max_length:
                return error(
                    400,
                    f"'{where}' is {len(ids)} tokens; this model reads at most {embedder.max_length}. "
                    "Split it and embed the parts.",
                    param,
                    "context_length_exceeded",
                )
            inputs.append(ids)
        vectors = await asyncio.wrap_future(embedder.submit(inputs))
        tokens = sum(len(ids) for ids in inputs)
        metrics.PROMPT_TOKENS.inc(tokens)
        metrics.REQUESTS.labels("embeddings", "stop").inc()
        # orjson: a response is hundreds of floats per input, where json.dumps is the slow part.
        answer = protocol.answer(state.served_model, vectors, parsed.encoding_format, tokens)
        return Response(orjson.dumps(answer), media_type="application/json")

    async def not_generating(request: Request) -> Response:
        return error(
            400,
            f"The model `{state.served_model}` is an embedding model: call /v1/embeddings.",
            "model",
            "model_not_supported",
        )

    async def models(request: Request) -> Response:
        if not is_authorized(request, state.api_key):
            return unauthorized()
        data = [{"id": state.served_model, "object": "model", "created": state.started, "owned_by": "maas"}]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        alive = embedder.alive()
        return JSONResponse(
            {"status": "ok" if alive else "embedder stopped", "model": state.served_model, "adapters": []},
            status_code=200 if alive else 503,
        )

    state.started = int(time.time())
    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/chat/completions", not_generating, methods=["POST"]),
            Route("/v1/completions", not_generating, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
